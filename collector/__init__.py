"""recp-monitor edge side: configuration, device profiles, Modbus, MQTT and the virtual plant.

Importing this package stays light: it never imports numba or numpy.
"""

__version__ = "0.1.0"
