"""The detector service (``recp detect``): MQTT in, detectors, InfluxDB and alerts out.

Modules, one job each: :mod:`.config` (the ``kind: analytics`` file), :mod:`.validate`
(payload checks and dead letters), :mod:`.dedup` (at-least-once delivery made exactly-once
per reading), :mod:`.spool` (the on-disk point buffer), :mod:`.lines` (line protocol),
:mod:`.sink` (spool -> InfluxDB), :mod:`.pipeline` (counter -> intervals -> detectors),
:mod:`.alerts` (event hysteresis), :mod:`.checkpoint` (state on disk) and :mod:`.service`
(the wiring). See ``docs/detector-service.md``.
"""
