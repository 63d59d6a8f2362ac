"""The Spark JVMs' CDS archive cache: one build for concurrent builders, bounded, per user,
stale archives ignored, partial files of dead builders removed. A stand-in ``java`` writes the
archive, so these run in seconds; test_gang_spark runs the real JVMs with it."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from sideband.gang import cds

FAKE_JAVA = """#!/bin/sh
# Stands in for "java -Xshare:dump": counts its runs, takes a while, writes the archive.
for a in "$@"; do case "$a" in -XX:SharedArchiveFile=*) out="${a#*=}";; esac; done
echo run >> "$(dirname "$0")/runs"
sleep 0.5
printf archive > "$out"
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _archive(tmp: Path) -> cds.Archive:
    java, jars = tmp / "bin" / "java", tmp / "jars"
    if not java.exists():  # the same files (and so the same key) in every process
        java.parent.mkdir()
        java.write_text(FAKE_JAVA)
        java.chmod(0o755)
        jars.mkdir()
        (jars / "a.jar").write_bytes(b"jar")
    mark = "/nonexistent/conf"
    archive = cds.for_command(
        [str(java), "-cp", f"{mark}:{jars}/*", "--add-modules=x", "Main"], mark
    )
    assert archive is not None
    return archive


def _record(archive: cds.Archive, label: str, lines: str) -> None:
    [opt] = archive.options(label)
    assert opt.startswith("-XX:DumpLoadedClassList=")
    Path(opt.split("=", 1)[1]).write_text(lines)


def test_folder_is_private_and_classpath_uses_the_shared_empty_conf_dir(cache: Path) -> None:
    archive = _archive(cache)
    assert stat.S_IMODE(os.stat(archive.root).st_mode) == 0o700
    assert archive.classpath.startswith(cds.Archive.conf_dir(archive.root))
    assert archive.modules == ["--add-modules=x"]
    (Path(archive.root) / "conf" / "spark-defaults.conf").write_text("x")
    assert cds.root() is None  # a conf dir that is not empty would change every JVM: refused


def test_lists_merge_into_names_once_and_a_cut_off_line_is_dropped(cache: Path) -> None:
    archive = _archive(cache)
    _record(archive, "g-r0", "a/A id: 1\nb/B id: 2\n@lambda-proxy a/A run\nc/C id: 3 super: 0\n")
    _record(archive, "g-r1", "b/B id: 7\nd/D id: 8\ne/E_cut_off")
    lists = sorted(str(p) for p in Path(archive.root).glob("*.lst"))
    assert list(cds._class_names(lists)) == ["a/A", "b/B", "d/D"]


def _build(xdg: str, tmp: str) -> None:
    os.environ["XDG_CACHE_HOME"] = xdg
    thread = _archive(Path(tmp)).build_in_background()
    if thread is not None:
        thread.join()


def test_concurrent_builders_build_once_then_jvms_use_it(cache: Path) -> None:
    archive = _archive(cache)
    _record(archive, "g-r0", "a/A id: 1\n")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build, args=(os.environ["XDG_CACHE_HOME"], str(cache)))]
    procs.append(ctx.Process(target=_build, args=(os.environ["XDG_CACHE_HOME"], str(cache))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert archive.ready()
    assert (cache / "bin" / "runs").read_text().count("run") == 1
    left = sorted(p.name for p in Path(archive.root).iterdir())
    assert left == sorted(["conf", f"{archive.key}.jsa", f"{archive.key}.lock"])  # no lists, tmp
    assert archive.options("g-r0") == [f"-XX:SharedArchiveFile={archive.path}", "-Xshare:auto"]
    assert archive.build_in_background() is None  # built: nothing to do


def test_a_changed_jar_means_a_new_key_and_old_archives_are_pruned(cache: Path) -> None:
    archive = _archive(cache)
    Path(archive.path).write_text("old")
    os.utime(archive.path, (time.time() - 1000, time.time() - 1000))  # least recently used
    (cache / "jars" / "a.jar").write_bytes(b"a newer spark")
    assert _archive(cache).key != archive.key  # the stale archive is not used
    where = Path(archive.root)
    for i in range(cds.KEEP + 2):
        (where / f"k{i}.jsa").write_text("x")
        os.utime(where / f"k{i}.jsa", (time.time() - 100 + i, time.time() - 100 + i))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (where / f"k.jsa-p{dead.pid}.tmp").write_text("partial")
    (where / f"k.jsa-p{os.getpid()}.tmp").write_text("being built")
    old_list = where / "k-g-r0.lst"
    old_list.write_text("a/A\n")
    os.utime(old_list, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    cds.prune(str(where))
    names = sorted(p.name for p in where.iterdir())
    kept = sorted(n for n in names if n.endswith(".jsa"))
    assert kept == [f"k{i}.jsa" for i in range(2, cds.KEEP + 2)]  # the KEEP newest
    assert f"k.jsa-p{dead.pid}.tmp" not in names and f"k.jsa-p{os.getpid()}.tmp" in names
    assert "k-g-r0.lst" not in names
