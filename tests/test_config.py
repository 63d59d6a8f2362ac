"""sideband.config (issue 17 item 6): one registry of every SIDEBAND_* variable, read when asked,
validated with errors that name the variable, the value and what is accepted; the documentation
page is the registry's table; the modules that read variables read them through it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from sideband import config, doctor
from sideband.errors import ConfigError, InvalidArgumentError, SidebandError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sideband"
# Strings of the SIDEBAND_ form that are no environment variables.
NOT_VARIABLES = {"SIDEBAND_NUMPY"}  # the RDT transport's name


def test_doc_is_the_registry_table() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config.markdown_table(), (
        "docs/configuration.md differs from the registry: run "
        "python -c 'import sideband.config as c; print(c.markdown_table(), end=\"\")' "
        "> docs/configuration.md"
    )
    for v in config.registry():
        assert f"| `{v.name}` |" in doc


def test_every_variable_in_the_source_is_registered() -> None:
    names = {v.name for v in config.registry()}
    used: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bSIDEBAND_[A-Z0-9_]+\b", path.read_text()):
            used.setdefault(name, str(path.relative_to(SRC)))
    missing = {n: p for n, p in used.items() if n not in names | NOT_VARIABLES}
    assert not missing, f"register these in sideband/config.py: {missing}"
    assert len(names) >= 27


def test_config_is_a_leaf() -> None:
    tree = ast.parse((SRC / "config.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    ours = {m for m in imported if m.split(".")[0] == "sideband"}
    assert ours == {"sideband.errors"}
    others = {m.split(".")[0] for m in imported} - {"sideband", "__future__"}
    assert others <= set(sys.stdlib_module_names), others


def test_defaults_read_when_asked_and_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in config.registry():
        monkeypatch.delenv(v.name, raising=False)
        assert config.get(v.name) == v.default
    monkeypatch.setenv("SIDEBAND_LINK_TIMEOUT_S", "7.5")
    assert config.get("SIDEBAND_LINK_TIMEOUT_S") == 7.5
    monkeypatch.setenv("SIDEBAND_LINK_TIMEOUT_S", "2")  # not frozen at the first read
    assert config.get("SIDEBAND_LINK_TIMEOUT_S") == 2.0
    monkeypatch.setenv("SIDEBAND_LINK_TIMEOUT_S", "  ")
    assert config.get("SIDEBAND_LINK_TIMEOUT_S") == 3.0
    assert not config.is_set("SIDEBAND_LINK_TIMEOUT_S")
    with pytest.raises(KeyError, match="SIDEBAND_NOPE is not a sideband setting"):
        config.get("SIDEBAND_NOPE")


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("SIDEBAND_CMA", "0", False),
        ("SIDEBAND_CMA", "Off", False),
        ("SIDEBAND_CMA", "yes", True),
        ("SIDEBAND_SPIN", "0", 0),
        ("SIDEBAND_SHM_RING_BYTES", "8M", 8 << 20),
        ("SIDEBAND_SHM_PUBLISH_BYTES", "64KiB", 64 << 10),
        ("SIDEBAND_HIER_PIPELINE_BYTES", "1048576", 1 << 20),
        ("SIDEBAND_HIERARCHICAL", "flat", "off"),
        ("SIDEBAND_HIERARCHICAL", "1", "on"),
        ("SIDEBAND_PORT_RANGE", "40000-40010", (40000, 40010)),
        ("SIDEBAND_LOG_LEVEL", "info", 20),
        ("SIDEBAND_LOG_LEVEL", "warn", 30),
        ("SIDEBAND_TESTBED_MODE", "LOCAL", "local"),
        ("SIDEBAND_RDT_KEEP_S", "0", 0.0),
        ("SIDEBAND_TESTBED", '{"mode": "local"}', {"mode": "local"}),
    ],
)
def test_accepted_values(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, value: object
) -> None:
    monkeypatch.setenv(name, text)
    assert config.get(name) == value


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("SIDEBAND_CMA", "2", "1 or 0"),
        ("SIDEBAND_SPIN", "-1", "an integer >= 0"),
        ("SIDEBAND_SPIN", "many", "an integer >= 0"),
        ("SIDEBAND_SHM_RING_BYTES", "100", ">= 4096"),
        ("SIDEBAND_SHM_RING_BYTES", "4X", ">= 4096"),
        ("SIDEBAND_LINK_TIMEOUT_S", "0", "seconds > 0"),
        ("SIDEBAND_LINK_TIMEOUT_S", "nan", "seconds > 0"),
        ("SIDEBAND_RDT_TIMEOUT_S", "inf", "seconds > 0"),
        ("SIDEBAND_METRICS_INTERVAL_S", "0.01", ">= 0.05"),
        ("SIDEBAND_PORT_RANGE", "5-3", "'lo-hi'"),
        ("SIDEBAND_PORT_RANGE", "40000", "'lo-hi'"),
        ("SIDEBAND_HOST", "a b", "no spaces"),
        ("SIDEBAND_HIERARCHICAL", "sometimes", "auto, on"),
        ("SIDEBAND_TESTBED_MODE", "vm", "auto, netns or local"),
        ("SIDEBAND_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("SIDEBAND_TESTBED", "{", "JSON"),
    ],
)
def test_bad_values_say_what_is_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, says: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(ConfigError) as e:
        config.get(name)
    msg = str(e.value)
    assert msg.startswith(f"{name}={text!r} is not valid: expected ") and says in msg, msg
    assert "docs/configuration.md" in msg
    # Still the builtin a caller of the old parsing caught.
    assert isinstance(e.value, InvalidArgumentError) and isinstance(e.value, ValueError)
    assert isinstance(e.value, SidebandError)


def test_moved_reads_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from sideband import _net
    from sideband.collective.rendezvous import topology
    from sideband.rdt import config as rdt_config
    from sideband.rdt.local import MAPS
    from sideband.rdt.pool import POOL

    monkeypatch.setenv("SIDEBAND_LINK_TIMEOUT_S", "9")
    assert _net.link_timeout_s() == 9.0
    monkeypatch.setenv("SIDEBAND_PORT_RANGE", "x-y")
    with pytest.raises(ConfigError, match="SIDEBAND_PORT_RANGE"):
        _net.port_range()
    monkeypatch.setenv("SIDEBAND_HOST", "127.0.0.9")
    assert _net.node_address() == "127.0.0.9"
    monkeypatch.setenv("SIDEBAND_RDT_KEEP_S", "0.5")
    assert POOL.keep_s == 0.5 and MAPS.keep_s == 0.5
    settings = rdt_config.Settings()
    monkeypatch.setenv("SIDEBAND_RDT_SERVE", "1")
    monkeypatch.setenv("SIDEBAND_RDT_TIMEOUT_S", "4")
    assert settings.serve is True and settings.timeout_s == 4.0
    settings.serve = False  # what configure() sets wins over the environment
    assert settings.serve is False and "serve=False" in repr(settings)
    monkeypatch.setenv("SIDEBAND_HIERARCHICAL", "0")
    monkeypatch.setenv("SIDEBAND_HIER_PIPELINE_BYTES", "1M")
    assert topology.settings() == {"hier": "off", "hier_pipeline": 1 << 20}
    monkeypatch.setenv("SIDEBAND_HOST_KEY", "k1")
    assert topology.host_key().endswith(":k1")


def test_gang_context_and_testbed_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from sideband.errors import TestbedError
    from sideband.gang import contract
    from sideband.testbed import Testbed

    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for k, v in {**env, "SIDEBAND_GANG": "g", "SIDEBAND_GANG_ATTEMPT": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(contract, "_current", None)
    ctx = contract.context()
    assert (ctx.gang_name, ctx.attempt, ctx.rank) == ("g", 2, 1)
    monkeypatch.setenv("SIDEBAND_TESTBED_MODE", "vm")
    with pytest.raises(ConfigError, match="SIDEBAND_TESTBED_MODE='vm'"):
        Testbed(1)
    with pytest.raises(TestbedError, match="mode must be one of"):
        Testbed(1, mode="vm")


def test_doctor_lists_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in config.registry():
        monkeypatch.delenv(v.name, raising=False)
    monkeypatch.setenv("SIDEBAND_GANG", "g")  # set by sideband itself: not listed
    f = doctor._settings()
    assert (f.state, f.detail) == ("ok", "every SIDEBAND_* variable at its default")
    monkeypatch.setenv("SIDEBAND_CMA", "0")
    f = doctor._settings()
    assert (f.state, f.detail) == ("ok", "SIDEBAND_CMA=0")
    monkeypatch.setenv("SIDEBAND_SPIN", "lots")
    f = doctor._settings()
    assert f.state == "fail" and "SIDEBAND_SPIN='lots'" in f.detail
    assert any(x.check == "settings" for x in doctor.run())
