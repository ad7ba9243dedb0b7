"""The deployment files: compose stack, images, systemd units, install script, env example.

No Docker engine (nor its compose plugin) is installed here, so the compose file is checked
as YAML against what the stack needs: every service restarts and has a health check, the
secrets come from deploy/.env (never inline), the files Mosquitto's shipped configuration
names are mounted where it looks, Grafana gets the provisioning files. The systemd units go
through ``systemd-analyze verify`` and ``systemd-analyze security`` when available.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|(^|_)KEY$")
VAR_REF = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def example_env() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "example.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), key
            out[key] = value
    return out


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in strings(k) + strings(v)]
    if isinstance(node, list):
        return [x for v in node for x in strings(v)]
    return []


def resolve(value: str) -> str:
    """``value`` with each ${VAR:-default} replaced by its default (others by VAR)."""
    return VAR_REF.sub(lambda m: m.group(3) if m.group(2) == ":-" else m.group(1), value)


def volume(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume."""
    parts = resolve(spec).split(":")
    return parts[0], parts[1]


COMPOSE = load_compose()
SERVICES: dict[str, Any] = COMPOSE["services"]


# --------------------------------------------------------------------------- compose


def test_compose_has_the_stack_and_the_demo_profile() -> None:
    assert {"mosquitto", "influxdb", "grafana", "detect"} <= set(SERVICES)
    core = {n for n, s in SERVICES.items() if "profiles" not in s}
    demo = {n for n, s in SERVICES.items() if "demo" in s.get("profiles", [])}
    assert core == {"mosquitto", "influxdb", "grafana", "detect"}
    assert demo == {"simulate", "agent"}
    assert SERVICES["influxdb"]["image"].startswith("influxdb:2")
    assert SERVICES["detect"]["command"][:1] == ["detect"]
    assert SERVICES["simulate"]["command"][:1] == ["simulate"]
    assert SERVICES["agent"]["command"][:1] == ["agent"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_restarts_and_has_a_health_check(name: str) -> None:
    s = SERVICES[name]
    assert s["restart"] in ("unless-stopped", "always", "on-failure")
    check = s["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert {"interval", "timeout", "retries"} <= set(check)
    assert "image" in s or "build" in s
    for dep, cond in (s.get("depends_on") or {}).items():
        assert dep in SERVICES
        if cond["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dep]


def test_recp_services_are_built_from_the_dockerfile_and_locked_down() -> None:
    for name in ("detect", "simulate", "agent"):
        s = SERVICES[name]
        assert s["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile",
                              "target": "recp"}
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in s["security_opt"]
    assert SERVICES["mosquitto"]["build"]["target"] == "mosquitto"
    # the agent shares the simulator's network namespace: the plant's Modbus ports are on
    # its loopback, as in edge_config/sites/demo.yaml
    assert SERVICES["agent"]["network_mode"] == "service:simulate"


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for s in SERVICES.values():
        for v in s.get("volumes", []):
            source = volume(v)[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared


def test_no_inline_secrets_and_every_variable_is_in_the_example() -> None:
    env = example_env()
    for value in strings(COMPOSE):
        for var, _, _ in VAR_REF.findall(value):
            assert var in env, f"${{{var}}} is not in deploy/example.env"
    for name, s in SERVICES.items():
        for key, value in (s.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                m = VAR_REF.fullmatch(str(value))
                assert m, f"{name}: {key} is inline; use ${{VAR:?...}} from deploy/.env"
                if "demo" not in s.get("profiles", []):
                    assert m.group(2) == ":?", f"{name}: {key} must be required (:?)"
    # the example holds no secret: every secret-looking variable is empty
    for key, value in env.items():
        if SECRET_NAME.search(key):
            assert value == "", f"deploy/example.env: {key} must be empty"


def test_env_files_with_secrets_are_not_committed() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("deploy/.env", "deploy/recp.env", "deploy/secrets/x.env"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "deploy/example.env"],
                          cwd=REPO).returncode == 1


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin), else ``docker-compose`` (v1, Debian's package)."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_config(tmp_path: Path, env_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = compose_command()
    assert cmd is not None
    text = (DEPLOY / "compose.yaml").read_text()
    if cmd == ["docker-compose"]:  # v1 predates the top-level name:
        text = text.replace("\nname: recp\n", "\n")
    (tmp_path / "compose.yaml").write_text(text)
    (tmp_path / "test.env").write_text(env_text)
    return subprocess.run(
        [*cmd, "--env-file", str(tmp_path / "test.env"), "-f", str(tmp_path / "compose.yaml"),
         "--project-directory", str(DEPLOY), *args, "config"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.skipif(compose_command() is None,
                    reason="neither docker compose nor docker-compose is installed "
                    "(the YAML checks above ran)")
def test_compose_config_accepts_the_file_and_requires_the_secrets(tmp_path: Path) -> None:
    filled = "".join(f"{k}={v or 'x' * 20}\n" for k, v in example_env().items())
    ok = compose_config(tmp_path, filled, "--profile", "demo")
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert set(resolved["services"]) == set(SERVICES)
    assert "${" not in ok.stdout
    # the example as it is (secrets empty): refused, naming the first missing secret
    empty = compose_config(tmp_path, (DEPLOY / "example.env").read_text())
    assert empty.returncode != 0
    assert re.search(r"set \w+ in deploy/\.env", empty.stderr), empty.stderr


def mosquitto_conf_paths() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("password_file", "acl_file", "cafile", "certfile",
                                            "keyfile", "persistence_location"):
            out[parts[0]] = parts[1]
    return out


def test_mosquitto_gets_the_files_its_shipped_config_names() -> None:
    paths = mosquitto_conf_paths()
    assert set(paths) == {"password_file", "acl_file", "cafile", "certfile", "keyfile",
                          "persistence_location"}
    targets = {volume(v)[1].rstrip("/") for v in SERVICES["mosquitto"]["volumes"]}
    for key, path in paths.items():
        assert path.rstrip("/") in targets, f"{key} {path} is not mounted"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY deploy/mosquitto/mosquitto.conf /etc/mosquitto/mosquitto.conf" in dockerfile
    assert SERVICES["mosquitto"]["ports"] == ["${MQTT_PORT:-8883}:8883"]  # TLS port only


def test_grafana_gets_provisioning_and_dashboards() -> None:
    mounts = {volume(v)[1]: volume(v)[0] for v in SERVICES["grafana"]["volumes"]}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/recp.yaml")
                              .read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == \
        "./grafana/provisioning/datasources"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/recp.yaml").read_text())
    env = SERVICES["grafana"]["environment"]
    needed = {v for text in strings(ds) for v in re.findall(r"\$\{(\w+)\}", text)}
    assert needed == {"RECP_INFLUX_URL", "RECP_INFLUX_ORG", "RECP_INFLUX_BUCKET",
                      "GRAFANA_INFLUX_READ_TOKEN"}
    for var in needed:
        assert var in env, f"the datasource needs {var} in grafana's environment"


def test_dockerfile_targets_and_build_context() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert {"mosquitto", "build", "recp"} <= set(stages)
    assert "ARG EXTRAS=analytics,edge" in text and '".[${EXTRAS}]"' in text
    assert "USER recp" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            allowed = any(p == f"!{item.rstrip('/')}" or p == f"!{item.rstrip('/')}/"
                          for p in ignore)
            assert allowed, f"COPY {item}: not in Dockerfile.dockerignore"
            assert (REPO / item).exists(), item


def test_analytics_file_matches_the_detect_unit() -> None:
    cfg = yaml.safe_load((DEPLOY / "config" / "analytics.yaml").read_text())
    unit = parse_unit(DEPLOY / "systemd" / "recp-detect.service")
    creds = dict(c.split(":", 1) for c in unit["Service"]["LoadCredential"])
    base = "/run/credentials/recp-detect.service/"
    assert cfg["mqtt"]["password_file"] == base + "mqtt-password"
    assert cfg["influx"]["token_file"] == base + "influx-token"
    assert set(creds) == {"mqtt-password", "influx-token"}
    state = unit["Service"]["StateDirectory"][0]
    assert cfg["spool"]["path"].startswith(f"/var/lib/{state}/")
    assert cfg["checkpoint"]["path"].startswith(f"/var/lib/{state}/")
    # compose mounts the baselines where the file looks for them
    targets = {volume(v)[1] for v in SERVICES["detect"]["volumes"]}
    assert cfg["baselines"]["dir"] in targets
    # compose's health check watches the checkpoint file
    assert cfg["checkpoint"]["path"] in " ".join(SERVICES["detect"]["healthcheck"]["test"])


def test_analytics_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    config = pytest.importorskip("detectors.service.config",
                                 reason="the detector service is not in this tree")
    monkeypatch.setenv("RECP_MQTT_PASSWORD", "x" * 16)
    monkeypatch.setenv("RECP_INFLUX_TOKEN", "t" * 16)
    spec = config.load_analytics(DEPLOY / "config" / "analytics.yaml")
    assert spec.mqtt_password == "x" * 16 and spec.influx_token == "t" * 16


# --------------------------------------------------------------------------- systemd


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), defaultdict(list))
            continue
        assert current is not None, f"{path.name}: {line!r} before a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        current[key.strip()].append(value.strip())
    return sections


AGENT_UNIT = DEPLOY / "systemd" / "recp-agent.service"
DETECT_UNIT = DEPLOY / "systemd" / "recp-detect.service"


def last(unit: dict[str, dict[str, list[str]]], key: str) -> str | None:
    values = unit["Service"].get(key)
    return values[-1] if values else None


def source_calls_sd_notify(*dirs: str) -> bool:
    for d in dirs:
        for f in (REPO / d).rglob("*.py"):
            if re.search(r"sd_notify|NOTIFY_SOCKET|WATCHDOG_USEC", f.read_text()):
                return True
    return False


@pytest.mark.parametrize("path, sources", [(AGENT_UNIT, ("collector",)),
                                           (DETECT_UNIT, ("detectors/service",))])
def test_units_are_hardened(path: Path, sources: tuple[str, ...]) -> None:
    unit = parse_unit(path)
    s = unit["Service"]
    assert last(unit, "User") == "recp" or last(unit, "DynamicUser") == "true"
    for key, want in {"ProtectSystem": "strict", "NoNewPrivileges": "true",
                      "PrivateTmp": "true", "ProtectHome": "true",
                      "Restart": "on-failure", "CapabilityBoundingSet": "",
                      "ProtectKernelTunables": "true", "ProtectKernelModules": "true",
                      "ProtectControlGroups": "true", "RestrictSUIDSGID": "true",
                      "LockPersonality": "true", "SystemCallArchitectures": "native"}.items():
        assert last(unit, key) == want, f"{path.name}: {key}={last(unit, key)!r}"
    assert set(last(unit, "RestrictAddressFamilies").split()) == {  # type: ignore[union-attr]
        "AF_UNIX", "AF_INET", "AF_INET6"}
    assert last(unit, "RestartSec")
    assert last(unit, "ExecStart").startswith("/opt/recp/bin/recp ")  # type: ignore[union-attr]
    assert s["LoadCredential"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # a watchdog only where the program pets it
    notify = source_calls_sd_notify(*sources)
    assert (last(unit, "Type") == "notify") == notify
    assert ("WatchdogSec" in s) == notify


def test_agent_unit_allows_serial_ports_and_writes_only_the_outbox() -> None:
    unit = parse_unit(AGENT_UNIT)
    s = unit["Service"]
    assert last(unit, "DevicePolicy") == "closed"
    allowed = {d.split()[0] for d in s["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyAMA"} <= allowed
    assert "dialout" in last(unit, "SupplementaryGroups").split()  # type: ignore[union-attr]
    assert last(unit, "PrivateDevices") in (None, "false")  # it would hide the serial ports
    # the example Pi site's outbox is in the one writable directory
    site = yaml.safe_load((REPO / "edge_config/sites/example_pi.yaml").read_text())
    outbox_dir = str(Path(site["outbox"]["path"]).parent)
    assert s["ReadWritePaths"] == [outbox_dir]
    assert outbox_dir == "/var/lib/" + last(unit, "StateDirectory")  # type: ignore[operator]
    assert [c.split(":")[0] for c in s["LoadCredential"]] == ["mqtt-password"]
    # adjtimex(2) reads the clock's sync state (clock.require: ntp): ProtectClock forbids it
    assert last(unit, "ProtectClock") in (None, "false")
    assert "adjtimex" in s["SystemCallFilter"]


def test_detect_unit_lets_numba_compile() -> None:
    unit = parse_unit(DETECT_UNIT)
    assert last(unit, "MemoryDenyWriteExecute") in (None, "false", "no")
    assert "MemoryDenyWriteExecute" in DETECT_UNIT.read_text()  # the comment saying why
    assert "NUMBA_CACHE_DIR=/var/cache/recp/numba" in unit["Service"]["Environment"]
    assert last(unit, "CacheDirectory") == "recp"


def _units_with_real_binary(tmp_path: Path) -> list[Path]:
    recp = Path(sys.executable).parent / "recp"
    if not recp.exists():
        recp = Path(shutil.which("recp") or "/bin/true")
    out = []
    for src in (AGENT_UNIT, DETECT_UNIT):
        dst = tmp_path / src.name
        dst.write_text(src.read_text().replace("/opt/recp/bin/recp", str(recp)))
        out.append(dst)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (the structural tests above ran)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _units_with_real_binary(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # unknown keys and bad values are only warnings: there must be none
    assert proc.stderr.strip() == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed")
@pytest.mark.parametrize("name, worst", [("recp-agent.service", 2.5),
                                         ("recp-detect.service", 2.5)])
def test_systemd_analyze_security(name: str, worst: float, tmp_path: Path) -> None:
    units = {u.name: u for u in _units_with_real_binary(tmp_path)}
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(units[name])],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    if m is None and "offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= worst, proc.stdout


# --------------------------------------------------------------------------- install script

INSTALL = DEPLOY / "install-agent.sh"


def test_install_script_syntax_and_usage() -> None:
    assert INSTALL.stat().st_mode & 0o111, "install-agent.sh is not executable"
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--site FILE" in proc.stderr
    proc = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
    text = INSTALL.read_text()
    assert "set -euo pipefail" in text
    assert "[edge]" in text and "numba" in text  # the edge install, checked to stay small


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (apt-get install shellcheck)")
def test_install_script_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------- W^X memory

# Runs a command with the kernel's "memory-deny-write-execute" (prctl PR_SET_MDWE, Linux
# 6.3+), what MemoryDenyWriteExecute=yes asks of systemd (which uses seccomp for it).
MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def run_without_wx(code: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    return proc


def test_agent_runs_without_writable_executable_memory() -> None:
    proc = run_without_wx(
        "import collector.agent as a, collector.publisher, pymodbus, aiomqtt, ssl\n"
        "from collector.cli import main\n"
        "a.kernel_clock_synchronised()\n"
        "raise SystemExit(main(['config', 'check', 'edge_config/sites/example_pi.yaml']))")
    assert proc.returncode == 0, proc.stderr


def test_numba_cannot_compile_without_writable_executable_memory() -> None:
    # why recp-detect.service must not set MemoryDenyWriteExecute=yes
    proc = run_without_wx("import numba\n"
                          "print(numba.njit(lambda x: x + 1)(1))")
    assert proc.returncode != 0
    assert "executable memory" in proc.stderr
