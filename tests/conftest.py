"""Shared fixtures: real servers on loopback (Mosquitto, VictoriaMetrics) and the mbpoll client.

Everything here uses only the standard library and pytest.  Servers listen on 127.0.0.1 on a
free port chosen per start (never 1883/8428, so a system broker or database cannot interfere),
keep their data and logs in the test's tmp_path, and are torn down even when the test fails.
A missing binary or a server that does not come up in time *fails* the test: these are real
dependencies of the project, installed by .ci/run, not optional extras.

Fixtures
  mosquitto                  function  MosquittoServer, started
  mosquitto_factory          function  (extra_conf: str = "") -> MosquittoServer, started
  victoria_metrics           function  VictoriaMetricsServer, started
  victoria_metrics_factory   function  (*extra_args: str) -> VictoriaMetricsServer, started
  chain_factory              function  (plant: dict, **options) -> chain.Chain, the whole
                                       chain plant -> agent -> broker -> detect -> database
                                       (tests/chain.py), not started
  mbpoll                     function  run_mbpoll, after checking mbpoll is installed
  free_tcp_port              function  free_port(): an unused TCP port on 127.0.0.1

Every server has host, port, url, start(), stop(), kill() and running; start() after
stop()/kill() reuses the same port and data directory, for fault-injection tests.

Test modules should not import from this file at run time (use the fixtures; import the
classes under TYPE_CHECKING only): with several conftest.py files, the module named
"conftest" in sys.modules is whichever was loaded last.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 15.0  # seconds until a server must accept connections
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before falling back to SIGKILL
PORT_ATTEMPTS = 3  # fresh ports tried when another process grabbed ours first


# --------------------------------------------------------------------------- binaries


def find_binary(name: str, default: str) -> str | None:
    """Path of an executable: $RECP_<NAME>_BIN, else the Debian path, else PATH."""
    override = os.environ.get(f"RECP_{name.upper().replace('-', '_')}_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    if os.access(default, os.X_OK):
        return default
    return shutil.which(name)


def require_binary(name: str, default: str, package: str) -> str:
    """Path of an executable, or fail the test saying how to install it."""
    path = find_binary(name, default)
    if path is None:
        env = f"RECP_{name.upper().replace('-', '_')}_BIN"
        where = f"${env}={os.environ[env]}" if os.environ.get(env) else f"{default} and PATH"
        pytest.fail(
            f"{name} not found (looked at {where}). Install the Debian package "
            f"'{package}' (bash .ci/run does this) or set {env}.",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------- helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on host (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_tcp_port() -> int:
    """free_port() as a fixture, for tests that start their own servers."""
    return free_port()


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll condition until it is true; pytest.fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def _http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn making the child get SIGTERM if pytest dies without tearing down (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _die_with_parent()


class ServerStartError(Exception):
    """The server process exited, or did not become ready, during start()."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- server log (tail) ---\n{log}")
        self.log = log


class ServerProcess:
    """One external server process that can be stopped, killed and started again.

    start() runs the same argv each time (same port, same data directory) and returns once
    is_ready() is true.  Output goes to log_path, appended across restarts.
    """

    _live: ClassVar[set[ServerProcess]] = set()  # for the atexit safety net

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        is_ready: Callable[[], bool],
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.is_ready = is_ready
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None  # of the last successful start()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start the process and wait until it is ready; raises ServerStartError."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_PREEXEC,  # only calls prctl
            )
        ServerProcess._live.add(self)
        deadline = began + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                ServerProcess._live.discard(self)
                raise ServerStartError(
                    f"{self.name} exited with code {code} during startup: {' '.join(self.argv)}",
                    self.log_tail(),
                )
            if self.is_ready():
                self.startup_seconds = time.monotonic() - began
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} was not ready within {self.startup_timeout:.0f} s: "
                    f"{' '.join(self.argv)}",
                    self.log_tail(),
                )
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait (graceful: servers flush their data); SIGKILL if that hangs."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT)
        self._proc = None
        ServerProcess._live.discard(self)

    def kill(self) -> None:
        """SIGKILL and wait: a crash, nothing is flushed."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)
        self._proc = None
        ServerProcess._live.discard(self)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(ServerProcess._live):
        with contextlib.suppress(Exception):
            proc.kill()


@dataclass(frozen=True)
class Server:
    """A started server on loopback; the process can be stopped/killed/restarted in place."""

    host: str
    port: int
    url: str
    workdir: Path
    process: ServerProcess = field(repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """(Re)start on the same port and data directory; fails the test if it cannot."""
        try:
            self.process.start()
        except ServerStartError as exc:
            pytest.fail(str(exc), pytrace=False)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM, wait)."""
        self.process.stop(timeout)

    def kill(self) -> None:
        """Crash (SIGKILL, wait)."""
        self.process.kill()


S = TypeVar("S", bound=Server)


def _start_on_free_port(build: Callable[[int], S]) -> S:
    """build(port) -> server (not started); start it, retrying on a port lost to a race."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = build(free_port())
        try:
            server.process.start()
        except ServerStartError as exc:
            if "address already in use" in exc.log.lower() and attempt < PORT_ATTEMPTS:
                continue
            pytest.fail(str(exc), pytrace=False)
        return server
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _server_factory(build: Callable[..., S]) -> Iterator[Callable[..., S]]:
    started: list[S] = []

    def make(*args: Any, **kwargs: Any) -> S:
        server = _start_on_free_port(lambda port: build(port, *args, **kwargs))
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(started):
            server.stop()


def _workdir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name, numbered=True)


# --------------------------------------------------------------------------- Mosquitto


@dataclass(frozen=True)
class MosquittoServer(Server):
    """Mosquitto broker with anonymous access and on-disk persistence.

    The database is saved after every change (autosave_on_changes, interval 1), so a retained
    message or queued QoS>0 message survives kill() once db_path has been (re)written.
    """

    conf_path: Path
    data_dir: Path

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mosquitto.db"


def _build_mosquitto(
    binary: str, tmp_path_factory: pytest.TempPathFactory, port: int, extra_conf: str = ""
) -> MosquittoServer:
    workdir = _workdir(tmp_path_factory, "mosquitto")
    data_dir = workdir / "data"
    data_dir.mkdir()
    conf_path = workdir / "mosquitto.conf"
    # Run as ourselves: as root mosquitto would otherwise switch to the 'mosquitto' user,
    # which cannot write our tmp directory.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf_path.write_text(
        f"listener {port} {LOOPBACK}\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_on_changes true\n"
        "autosave_interval 1\n"
        "log_dest stdout\n"
        "log_type all\n"
        f"user {user}\n" + extra_conf + ("\n" if extra_conf else "")
    )
    process = ServerProcess(
        "mosquitto",
        [binary, "-c", str(conf_path)],
        workdir / "mosquitto.log",
        is_ready=lambda: port_accepts(LOOPBACK, port),
    )
    return MosquittoServer(
        host=LOOPBACK,
        port=port,
        url=f"mqtt://{LOOPBACK}:{port}",
        workdir=workdir,
        process=process,
        conf_path=conf_path,
        data_dir=data_dir,
    )


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MosquittoServer]]:
    """Start brokers: factory(extra_conf="") -> MosquittoServer; all stopped at teardown."""
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto", "mosquitto")

    def build(port: int, extra_conf: str = "") -> MosquittoServer:
        return _build_mosquitto(binary, tmp_path_factory, port, extra_conf)

    with _server_factory(build) as make:
        yield make


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoServer]) -> MosquittoServer:
    """A fresh broker for this test (function scope: tests may kill it)."""
    return mosquitto_factory()


# --------------------------------------------------------------------------- VictoriaMetrics


@dataclass(frozen=True)
class VictoriaMetricsServer(Server):
    """Single-node VictoriaMetrics (accepts Influx line protocol on /write, /api/v2/write)."""

    data_dir: Path

    def get(
        self, path: str, params: Sequence[tuple[str, str]] = (), timeout: float = 10.0
    ) -> bytes:
        query = f"?{urllib.parse.urlencode(list(params))}" if params else ""
        return _http_get(f"{self.url}{path}{query}", timeout)

    def flush(self) -> None:
        """Make everything written so far visible to queries (GET /internal/force_flush)."""
        self.get("/internal/force_flush")

    def query_export(
        self, match: str, start: str | None = None, end: str | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of the series matching a selector, via /api/v1/export.

        Each item is {"metric": {"__name__": ..., labels...}, "values": [...],
        "timestamps": [milliseconds...]}.  Influx writes are stored as
        <measurement>_<field> with the tags as labels.
        """
        params = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        body = self.get("/api/v1/export", params).decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def _vm_healthy(port: int) -> bool:
    try:
        return _http_get(f"http://{LOOPBACK}:{port}/health", timeout=0.5).strip() == b"OK"
    except (OSError, urllib.error.URLError):
        return False


def _build_victoria_metrics(
    binary: str, tmp_path_factory: pytest.TempPathFactory, port: int, *extra_args: str
) -> VictoriaMetricsServer:
    workdir = _workdir(tmp_path_factory, "victoria-metrics")
    data_dir = workdir / "data"
    argv = [
        binary,
        f"-httpListenAddr={LOOPBACK}:{port}",
        f"-storageDataPath={data_dir}",
        "-retentionPeriod=100y",
        "-dedup.minScrapeInterval=1ms",
        "-search.latencyOffset=1s",
        "-loggerLevel=ERROR",
        *extra_args,
    ]
    process = ServerProcess(
        "victoria-metrics",
        argv,
        workdir / "victoria-metrics.log",
        is_ready=lambda: _vm_healthy(port),
    )
    return VictoriaMetricsServer(
        host=LOOPBACK,
        port=port,
        url=f"http://{LOOPBACK}:{port}",
        workdir=workdir,
        process=process,
        data_dir=data_dir,
    )


@pytest.fixture
def victoria_metrics_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., VictoriaMetricsServer]]:
    """Start databases: factory(*extra_flags) -> VictoriaMetricsServer; stopped at teardown."""
    binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics", "victoria-metrics")

    def build(port: int, *extra_args: str) -> VictoriaMetricsServer:
        return _build_victoria_metrics(binary, tmp_path_factory, port, *extra_args)

    with _server_factory(build) as make:
        yield make


@pytest.fixture
def victoria_metrics(
    victoria_metrics_factory: Callable[..., VictoriaMetricsServer],
) -> VictoriaMetricsServer:
    """A fresh, empty VictoriaMetrics for this test (starts in well under a second)."""
    return victoria_metrics_factory()


@pytest.fixture
def vmauth_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str, str], Server]]:
    """Start vmauth (VictoriaMetrics' auth proxy): factory(backend_url, token) -> Server
    passing requests that carry ``token`` (its ``bearer_token``) to the backend."""
    binary = require_binary("vmauth", "/usr/bin/vmauth", "victoria-metrics")

    def build(port: int, backend: str, token: str) -> Server:
        workdir = _workdir(tmp_path_factory, "vmauth")
        config = workdir / "auth.yml"
        config.write_text(f"users:\n  - bearer_token: {token}\n    url_prefix: {backend}\n")
        argv = [binary, f"-auth.config={config}", f"-httpListenAddr={LOOPBACK}:{port}",
                "-loggerLevel=ERROR"]
        process = ServerProcess("vmauth", argv, workdir / "vmauth.log",
                                is_ready=lambda: port_accepts(LOOPBACK, port))
        return Server(host=LOOPBACK, port=port, url=f"http://{LOOPBACK}:{port}",
                      workdir=workdir, process=process)

    with _server_factory(build) as make:
        yield make


# --------------------------------------------------------------------------- mbpoll

_MBPOLL_VALUE = re.compile(r"^\[(\d+)\]:\s+(\S+)")


def _parse_mbpoll_value(token: str) -> int | float | str:
    try:
        return int(token, 16) if token.lower().startswith("0x") else int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token


def run_mbpoll(args: Sequence[str], timeout: float = 10.0) -> list[int | float | str]:
    """Run mbpoll once and return the values it printed, in reference order.

    args are mbpoll's own, host included, e.g.
    ["-m", "tcp", "-p", "5020", "-a", "1", "-t", "4:float", "-B", "-r", "1", "-c", "2",
    "127.0.0.1"]; "-1" (poll once) is added when missing.  Parsing: 16-bit registers give
    int (mbpoll's "65535 (-1)" gives 65535), ":hex" gives int, ":int" gives the *signed*
    32-bit int mbpoll prints (mask with 0xFFFFFFFF for uint32), ":float" gives int or float.
    Fails the test if mbpoll is missing, times out, exits non-zero or prints no value.
    """
    binary = require_binary("mbpoll", "/usr/bin/mbpoll", "mbpoll")
    argv = [binary, *([] if "-1" in args else ["-1"]), *args]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"mbpoll timed out after {timeout} s: {' '.join(argv)}", pytrace=False)
    values: list[int | float | str] = []
    for line in proc.stdout.splitlines():
        match = _MBPOLL_VALUE.match(line.strip())
        if match:
            values.append(_parse_mbpoll_value(match.group(2)))
    if proc.returncode != 0 or not values:
        pytest.fail(
            f"mbpoll failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"stderr: {proc.stderr.strip()}\nstdout: {proc.stdout.strip()}",
            pytrace=False,
        )
    return values


@pytest.fixture
def mbpoll() -> Callable[..., list[int | float | str]]:
    """run_mbpoll, after failing early if mbpoll is not installed."""
    require_binary("mbpoll", "/usr/bin/mbpoll", "mbpoll")
    return run_mbpoll


# --------------------------------------------------------------------------- the whole chain


@pytest.fixture
def chain_factory(
    tmp_path_factory: pytest.TempPathFactory,
    mosquitto_factory: Callable[..., MosquittoServer],
    victoria_metrics_factory: Callable[..., VictoriaMetricsServer],
) -> Iterator[Callable[..., Any]]:
    """factory(plant, **options) -> tests/chain.py's Chain on its own broker and database.

    Files are written and checked, nothing of the plant, agent or service runs yet: call
    ``fit_lead_in()`` (when a lead-in was asked for) and ``start()``. Everything is stopped
    at teardown.
    """
    from chain import BROKER_CONF, Chain

    made: list[Any] = []

    def make(plant: dict[str, Any], **options: Any) -> Any:
        chain = Chain(_workdir(tmp_path_factory, "chain"), plant,
                      broker=mosquitto_factory(BROKER_CONF), vm=victoria_metrics_factory(),
                      process=ServerProcess, **options)
        made.append(chain)
        return chain

    try:
        yield make
    finally:
        for chain in reversed(made):
            chain.close()
