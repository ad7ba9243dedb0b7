"""Fault matrix rows over the whole chain (tests/chain.py): a network partition between
the agent and the broker, one longer than the agent's outbox can hold, and the agent's
disk full during a partition.

The agent reaches Mosquitto through a loopback TCP proxy. Partitioned, the proxy forwards
nothing: bytes in either direction are dropped and new connections are accepted but
hear nothing, as behind a dead switch (no reset, no FIN: each side finds out by its own
timeouts). Healed, the dead connections are reset and new ones forwarded again.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chain import wait_until

pytestmark = pytest.mark.integration

INFLIGHT = 40  # the agent's max_inflight in the overflow test
PLANT: dict[str, Any] = {
    "kind": "plant",
    "name": "partition_dairy",
    "timezone": "UTC",
    "start": "2026-03-02T00:00:00Z",
    "days": 30,
    "seed": 5,
    "step_s": 300,
    "speed": 8640,  # a simulated day per 10 s
    "schedule": {"workdays": ["mon", "tue", "wed", "thu", "fri"],
                 "shifts": ["06:00-14:00", "14:00-22:00"]},
    "production": {"rate_units_h": 1000, "noise": 0.05},
    "meters": [
        {"id": "el_main", "profile": "schneider_pm5560", "port": 5020, "unit_id": 1,
         "load": {"base": 55, "running": 140, "noise": 0.04}, "initial": 1843302},
        {"id": "water_main", "profile": "endress_hauser_promag_w400", "port": 5021,
         "unit_id": 1, "load": {"base": 0.4, "running": 5.5, "noise": 0.05},
         "initial": 1000},
    ],
    "losses": [],
}


class Proxy:
    """A loopback TCP proxy that can drop all traffic (partition) and heal."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self.dropped_bytes = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = None
            if not self.cut.is_set():
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
            with self.lock:
                self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            if server is not None:
                threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.cut.is_set() or dst is None:
                self.dropped_bytes += len(data)  # the partition swallows it
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()

    def partition(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        """Reset every connection that lived through the partition, then forward again."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, server in pairs:
            for s in (client, server):
                if s is not None:
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
                        s.close()
                    except OSError:
                        pass
        self.cut.clear()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.heal()


def through_proxy(chain: Any, proxy: Proxy, outbox: dict[str, Any] | None = None,
                  mqtt_extra: dict[str, Any] | None = None) -> None:
    """Point the chain's agent at the proxy (and change its outbox and MQTT settings)."""
    site = yaml.safe_load(chain.paths["site"].read_text())
    site["mqtt"]["url"] = f"mqtt://127.0.0.1:{proxy.port}"
    site["mqtt"]["keepalive_s"] = 5
    site["mqtt"].update(mqtt_extra or {})
    if outbox:
        site["outbox"].update(outbox)
    chain.paths["site"].write_text(yaml.safe_dump(site, sort_keys=False))


def drain(chain: Any, timeout: float = 180.0) -> None:
    """chain.finish() for a run with dropped readings: the service's acknowledgement stops
    below the hole the drops left (docs/reliability.md), so wait for the database instead:
    every sequence number the broker carried is stored."""
    chain.stop_part("agent")
    chain.stop_part("plant")
    time.sleep(2.0)  # the last readings reach the watcher

    def stored() -> bool:
        with chain.watch._lock:
            published: dict[str, set[int]] = {}
            for r in chain.watch.readings:
                published.setdefault(r["meter"], set()).add(r["seq"])
        seqs = chain.stored("reading_seq")
        return all({int(v) for _, v in seqs.get(m, [])} >= want
                   for m, want in published.items())

    wait_until(stored, timeout, "the database to hold every published reading", chain.tails)


def test_partition_agent_broker_loses_and_doubles_nothing(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    """Two partitions of ~8 s (the agent's keepalive and publish timeouts run out; it
    reconnects into silence), healed in between: every served reading stored once."""
    chain = chain_factory(PLANT)
    proxy = Proxy(chain.broker.port)
    try:
        through_proxy(chain, proxy)
        chain.start()
        t0 = chain.sim_time()
        for k in range(2):
            chain.wait_sim(t0 + (2 * k + 1) * 86400)
            proxy.partition()
            time.sleep(8.0)
            proxy.heal()
        chain.wait_sim(t0 + 5 * 86400)
        chain.finish()
        result = chain.reconcile()
    finally:
        proxy.close()
    agent_log = (chain.dir / "agent.log").read_text()
    matrix_row("network partition agent-broker, twice ~8 s", result,
               note=f"a loopback proxy drops every byte, no reset ({proxy.dropped_bytes} "
                    "bytes swallowed); healed connections are reset and the agent reconnects")
    assert proxy.dropped_bytes > 0
    assert agent_log.count("mqtt connected") >= 3, chain.tails()  # it really lost the link
    for m in result.meters.values():
        assert m.produced > 100, m
        assert m.lost == 0 and m.duplicated == 0, m
        assert m.produced == m.matched == m.stored == m.published, m
        assert not m.seq_missing and m.seq_twice == 0, m
    assert not result.alerts_twice


def test_partition_longer_than_the_outbox_drops_exactly_the_oldest(
    chain_factory: Callable[..., Any], matrix_row: Callable[..., Any],
) -> None:
    """outbox cap 200: a partition that outlasts it drops the oldest readings; the agent
    counts them by reason, exactly what the database misses, and nothing else is lost."""
    chain = chain_factory(PLANT)
    proxy = Proxy(chain.broker.port)
    try:
        through_proxy(chain, proxy, {"cap": 200}, {"max_inflight": INFLIGHT})
        chain.start()
        t0 = chain.sim_time()
        chain.wait_sim(t0 + 86400)
        proxy.partition()

        def overflowed() -> bool:
            return "outbox full cap=200" in (chain.dir / "agent.log").read_text()

        wait_until(overflowed, 60, "the outbox to overflow", chain.tails)
        time.sleep(2.0)
        proxy.heal()
        chain.wait_sim(chain.sim_time() + 86400)
        drain(chain)
        result = chain.reconcile()
    finally:
        proxy.close()
    health = chain.watch.json(f"recp/v1/{chain.site}/_agent/health")
    dropped = health["outbox"]["dropped"]
    seqs = chain.stored("reading_seq")
    missing = {m: sorted(set(range(1, n + 1)) - {int(v) for t, v in seqs.get(m, [])})
               for m, n in chain.agent_last_seqs().items()}
    n_missing = sum(len(v) for v in missing.values())
    n_dropped = sum(dropped.values())
    matrix_row("partition longer than the outbox (cap 200)", result, dropped,
               note=f"the oldest dropped: {n_missing} missing from the database, one run of "
                    f"the oldest per meter; the agent counted {n_dropped}, up to "
                    f"max_inflight ({INFLIGHT}) more: sent when the link went silent, they "
                    "reached the broker but their PUBACK did not come back")
    assert list(dropped) == ["outbox full (cap 200), oldest dropped"], dropped
    # The agent counts every reading the cap pushed out. Those it had already sent when
    # the link went silent (at most max_inflight) reached the broker; their PUBACK was
    # lost, so the agent cannot know. Everything else it dropped is missing, nothing more.
    assert 0 < n_missing <= n_dropped <= n_missing + INFLIGHT
    for m in result.meters.values():
        gap = missing[m.meter]
        assert gap == list(range(gap[0], gap[0] + len(gap))), gap  # one run: the oldest
        assert m.duplicated == 0 and m.seq_twice == 0, m
        assert m.lost == len(m.seq_missing) == len(gap), m
        assert m.stored == m.matched == m.published, m


@pytest.fixture
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 16 MiB tmpfs for the agent's outbox (mounting needs root, as the CI runs)."""
    mnt = tmp_path_factory.mktemp("small-disk")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (root needed): {proc.stderr.strip()}",
                    pytrace=False)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the disk is full; the bytes written."""
    n = 0
    chunk = bytes(65536)
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last bits too
            try:
                while True:
                    n += f.write(bytes(size))
            except OSError:
                continue
    return n


def test_disk_full_during_a_partition_drops_exactly_what_was_not_stored(
    chain_factory: Callable[..., Any], small_disk: Path, matrix_row: Callable[..., Any],
) -> None:
    """The outbox's disk fills up (another file takes every byte) while the broker is
    unreachable. Readings that cannot be written are counted by reason and get no sequence
    number; once space is back and the link heals the outbox drains, and the database
    misses exactly the readings the agent counted, nothing else."""
    chain = chain_factory(PLANT)
    proxy = Proxy(chain.broker.port)
    ballast = small_disk / "ballast"
    try:
        through_proxy(chain, proxy, {"path": str(small_disk / "outbox.sqlite")})
        chain.paths["outbox"] = small_disk / "outbox.sqlite"
        chain.start()
        t0 = chain.sim_time()
        chain.wait_sim(t0 + 86400)
        proxy.partition()
        fill(ballast)

        def failing() -> bool:
            return (chain.dir / "agent.log").read_text().count("outbox write failed") >= 5

        wait_until(failing, 120, "outbox writes to fail on the full disk", chain.tails)
        ballast.unlink()
        time.sleep(2.0)
        proxy.heal()
        chain.wait_sim(chain.sim_time() + 86400)
        chain.finish()
        result = chain.reconcile()
    finally:
        proxy.close()
        ballast.unlink(missing_ok=True)
    agent_log = (chain.dir / "agent.log").read_text()
    health = chain.watch.json(f"recp/v1/{chain.site}/_agent/health")
    dropped = health["outbox"]["dropped"]
    matrix_row("agent disk full during a partition", result, dropped,
               note="the outbox on a 16 MiB tmpfs that another file fills while the broker "
                    "is unreachable, freed before the link heals: a reading that cannot be "
                    "written gets no sequence number and is counted")
    assert dropped and all(r.startswith("not stored:") for r in dropped), dropped
    assert "Traceback" not in agent_log
    n_dropped = sum(dropped.values())
    assert sum(m.lost for m in result.meters.values()) == n_dropped > 0
    for m in result.meters.values():
        assert m.duplicated == 0 and not m.seq_missing and m.seq_twice == 0, m
        assert m.stored == m.matched == m.published == m.last_seq, m
