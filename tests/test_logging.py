"""SIDEBAND_LOG_LEVEL (issue 17 item 6): the 'sideband' logger gets the level and one stderr
handler, only when the variable is set, and never the root logger; at DEBUG a group formed in
real actors logs who and where, each pair's transport, cross-memory attach with its reason, the
plan, and the teardown."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from sideband import config
from sideband.errors import ConfigError


@pytest.fixture
def clean_logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("sideband")
    saved = (log.level, list(log.handlers), log.propagate, config._handler)
    config._handler = None
    yield log
    log.setLevel(saved[0])
    log.handlers[:] = saved[1]
    log.propagate = saved[2]
    config._handler = saved[3]


def test_unset_touches_nothing(monkeypatch: pytest.MonkeyPatch, clean_logger: Any) -> None:
    monkeypatch.delenv("SIDEBAND_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    before = (clean_logger.level, list(clean_logger.handlers), root.level, list(root.handlers))
    config.configure_logging()
    assert before == (
        clean_logger.level,
        list(clean_logger.handlers),
        root.level,
        list(root.handlers),
    )


def test_level_and_one_stderr_handler(
    monkeypatch: pytest.MonkeyPatch, clean_logger: logging.Logger
) -> None:
    root = logging.getLogger()
    root_before = (root.level, list(root.handlers))
    monkeypatch.setenv("SIDEBAND_LOG_LEVEL", "debug")
    config.configure_logging()
    config.configure_logging()  # once per process, however often it is called
    ours = [h for h in clean_logger.handlers if h is config._handler]
    assert len(ours) == 1 and isinstance(ours[0], logging.StreamHandler)
    assert clean_logger.level == logging.DEBUG
    assert (root.level, list(root.handlers)) == root_before
    monkeypatch.setenv("SIDEBAND_LOG_LEVEL", "WARNING")
    config.configure_logging()
    assert clean_logger.level == logging.WARNING
    assert clean_logger.handlers.count(config._handler) == 1
    monkeypatch.setenv("SIDEBAND_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="SIDEBAND_LOG_LEVEL='LOUD'.*DEBUG, INFO, WARNING"):
        config.configure_logging()


@ray.remote(num_cpus=0)
class Logged:
    """An actor started with SIDEBAND_LOG_LEVEL=DEBUG; what its stderr handler writes is kept."""

    def capture(self) -> dict[str, Any]:
        import io
        import sys

        import sideband  # noqa: F401  (the import applies SIDEBAND_LOG_LEVEL)
        from sideband import config

        h = config._handler
        assert isinstance(h, logging.StreamHandler)
        found = {
            "to_stderr": h.stream is sys.stderr,
            "level": logging.getLogger("sideband").level,
            "root_has_ours": h in logging.getLogger().handlers,
        }
        self.buf = io.StringIO()
        h.setStream(self.buf)
        return found

    def allreduce(self, name: str) -> float:
        import numpy as np

        import sideband

        x = np.ones(4)
        sideband.get_group(name).allreduce(x)
        return float(x[0])

    def text(self) -> str:
        return self.buf.getvalue()


def test_debug_logs_formation_transports_cma_and_teardown(ray_session: None) -> None:
    import sideband

    env = {"env_vars": {"SIDEBAND_LOG_LEVEL": "DEBUG", "SIDEBAND_HOST": "127.0.0.1"}}
    actors = [Logged.options(runtime_env=env).remote() for _ in range(2)]
    try:
        for found in ray.get([a.capture.remote() for a in actors], timeout=120):
            assert found == {"to_stderr": True, "level": logging.DEBUG, "root_has_ours": False}
        for name, backend in (("logshm", "auto"), ("logtcp", "tcp")):
            g = sideband.create_group(actors, name=name, backend=backend)
            assert ray.get([a.allreduce.remote(name) for a in actors], timeout=60) == [2.0, 2.0]
            g.destroy()
        texts = ray.get([a.text.remote() for a in actors], timeout=60)
    finally:
        for a in actors:
            ray.kill(a)
    for rank, text in enumerate(texts):
        peer = 1 - rank
        assert "DEBUG sideband.collective" in text, text
        for name in ("logshm", "logtcp"):
            # Who and where.
            assert f"group '{name}' rank {rank}/2: joining" in text, text
            assert f"group '{name}' rank {rank}/2 formed: pid" in text, text
            assert "address 127.0.0.1" in text
            # Teardown.
            assert f"group '{name}' rank {rank}: destroyed" in text, text
        # Which transport per pair, and why cross-memory attach is on or off.
        assert f"group 'logshm' rank {rank} <-> rank {peer}: shm (same host" in text, text
        assert f"group 'logtcp' rank {rank} <-> rank {peer}: tcp ('127.0.0.1'" in text, text
        shm_cma = [ln for ln in text.splitlines() if "'logshm'" in ln and "cross-memory" in ln]
        assert len(shm_cma) == 1 and ("attach on (" in shm_cma[0] or "attach off (" in shm_cma[0])
        assert "cross-memory attach off (backend 'tcp')" in text, text
        assert "plan flat (one host)" in text, text
