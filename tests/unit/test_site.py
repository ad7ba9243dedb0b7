"""Site files: the shipped examples load, and each bad file in site_cases/ fails as expected.

A case is a folder named after the problem it pins down, holding ``site.yaml`` and
``expected.txt``: every line of expected.txt must start one reported problem (paths are
relative to the case folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.commands.config import check_file
from collector.configfile import ConfigError
from collector.site import Mqtt, broker_url, credentials, load_site

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(p for p in (Path(__file__).parent / "site_cases").iterdir() if p.is_dir())
SITES = sorted((ROOT / "edge_config" / "sites").glob("*.yaml"))


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)
def test_shipped_site_files_load(path: Path):
    spec = load_site(path)
    assert spec.meters
    for m in spec.meters:
        assert m.points and m.interval_s > 0
    assert check_file(path) is not None  # `recp config check` knows kind: site


def test_demo_site_matches_the_demo_plant():
    from collector.plant.load import load_plant

    plant = load_plant(ROOT / "edge_config" / "plants" / "demo.yaml").plant
    site = load_site(ROOT / "edge_config" / "sites" / "demo.yaml")
    served = {m.id: (m.profile, m.port, m.unit_id) for m in plant.meters}
    polled = {
        m.id: (m.profile_name, m.meter.connection.port, m.meter.unit_id)  # type: ignore[union-attr]
        for m in site.meters
    }
    assert polled == served


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_site_file(case: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(case)
    with pytest.raises(ConfigError) as err:
        load_site("site.yaml")
    got = [str(p) for p in err.value.problems]
    for want in (case / "expected.txt").read_text().splitlines():
        assert any(line.startswith(want) for line in got), f"{want!r} not in {got}"


def test_defaults_apply_and_meters_override_them(tmp_path: Path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "kind: site\nsite: s\npolling: {interval_s: 7, timeout_s: 0.3}\n"
        "outbox: {path: box.db}\n"
        "meters:\n"
        "  - {id: a, profile: eastron_sdm120, connection: {type: tcp, host: h}}\n"
        "  - {id: b, profile: eastron_sdm120, unit_id: 2, interval_s: 1, retries: 0,\n"
        "     points: [energy_kwh], connection: {type: tcp, host: h}}\n"
    )
    spec = load_site(f)
    a, b = spec.meters
    assert (a.interval_s, a.timeout_s, a.retries) == (7, 0.3, 1)
    assert (b.interval_s, b.retries) == (1, 0)
    assert [p.name for p in b.points] == ["energy_kwh"]
    assert spec.outbox_path == tmp_path / "box.db"
    assert spec.site.mqtt.port == 1883 and not spec.site.mqtt.use_tls


def test_mqtts_means_tls_on_8883():
    m = Mqtt(url="mqtts://broker.example.com")
    assert m.use_tls and m.port == 8883 and m.host == "broker.example.com"


def test_credentials_come_from_environment_or_file(tmp_path: Path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    m = Mqtt(username="edge", password_file=Path("pw"))
    assert credentials(m, tmp_path, {}).password == "s3cret"
    assert credentials(m, tmp_path, {"RECP_MQTT_PASSWORD": "env"}).password == "env"
    m2 = Mqtt(username="edge", password_env="MY_PW")
    assert credentials(m2, None, {"MY_PW": "x"}).password == "x"
    with pytest.raises(ConfigError, match="MY_PW is not set"):
        credentials(m2, None, {})
    with pytest.raises(ConfigError, match="cannot read"):
        credentials(Mqtt(username="e", password_file=Path("/nonexistent/pw")), None, {})
    assert credentials(Mqtt(), None, {}).password is None


def test_broker_url_precedence_flag_over_environment_over_file():
    m = Mqtt(url="mqtt://file:1883")
    assert broker_url(m, None, {}).url == "mqtt://file:1883"
    assert broker_url(m, None, {"RECP_MQTT_URL": "mqtt://env"}).url == "mqtt://env"
    assert broker_url(m, "mqtt://flag", {"RECP_MQTT_URL": "mqtt://env"}).url == "mqtt://flag"
    with pytest.raises(ConfigError):
        broker_url(m, "http://x", {})
