"""Class-data-sharing (AppCDS) archives for the Spark JVMs of gangs: built once, then reused.

A Spark JVM spends most of its start loading and verifying a few thousand Scala/Spark classes; a
CDS archive maps them in ready-made (about 40% less CPU to a ready master on a 2-core machine).
The first gang on a machine runs its master, workers and executors with
``-XX:DumpLoadedClassList``; once it is released the driver merges those lists and, in the
background, runs ``java -Xshare:dump`` (about 10 CPU-s); later gangs start with
``-XX:SharedArchiveFile``. A JVM that finds the archive unusable ignores it (``-Xshare:auto``).

The archive is keyed by the ``java`` binary and the classpath (every jar's name, size and mtime),
so a changed Java or Spark install gets a new key and the old archive is ignored, then pruned:
at most :data:`KEEP` archives per user, least recently used first. Files live in
``$XDG_CACHE_HOME/sideband/spark-cds`` (mode 0700, refused unless owned by this user); builders
take an exclusive ``flock`` per key and publish with an atomic rename, so concurrent builders
build once; partial files of dead builders (``...-p<pid>...``) are removed.

CDS needs the same classpath in every JVM, so the gang's Spark JVMs share one empty conf dir
here (``conf``) instead of one per member: the members' folders still hold their logs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

KEEP = 4  # archives are 100-175 MB each; two per Spark install (daemons, driver)
_LIST_SUFFIX = ".lst"
_LIST_MAX_AGE_S = 86400.0
_PID = re.compile(r"-p(\d+)(?:[-.]|$)")
_builds: list[threading.Thread] = []


def root() -> str | None:
    """This user's archive folder, or None (not creatable, or not ours)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "sideband", "spark-cds")
    try:
        os.makedirs(os.path.join(path, "conf"), mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, 0o700)  # makedirs leaves the umask's mode on the parents
        if st.st_uid != os.getuid() or os.listdir(os.path.join(path, "conf")):
            return None  # another user's folder, or a conf dir that is not the empty one
    except OSError:
        return None
    return path


class Archive:
    """The archive of one ``java`` + classpath; ``classpath`` uses :meth:`conf_dir` first."""

    def __init__(self, java: str, classpath: str, modules: list[str], where: str) -> None:
        self.java, self.classpath, self.modules, self.root = java, classpath, modules, where
        h = hashlib.sha256()
        for part in [os.path.realpath(java), classpath, *modules]:
            h.update(part.encode() + b"\0")
        for entry in classpath.split(os.pathsep):
            for path in sorted(glob.glob(entry[:-1] + "*.jar") if entry.endswith("*") else [entry]):
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with contextlib.suppress(OSError):
            st = os.stat(os.path.realpath(java))
            h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
        self.key = h.hexdigest()[:20]
        self.path = os.path.join(where, f"{self.key}.jsa")

    @staticmethod
    def conf_dir(where: str) -> str:
        return os.path.join(where, "conf") + os.sep  # as Spark's worker writes it for executors

    def ready(self) -> bool:
        return os.path.isfile(self.path)

    def options(self, label: str) -> list[str]:
        """JVM flags: use the archive, or (none yet) record the classes this JVM loads."""
        if self.ready():
            with contextlib.suppress(OSError):
                os.utime(self.path)  # recently used: kept by the pruning
            return [f"-XX:SharedArchiveFile={self.path}", "-Xshare:auto"]
        name = f"{self.key}-{label}{_LIST_SUFFIX}"  # label: unique per JVM of the gang
        return [f"-XX:DumpLoadedClassList={os.path.join(self.root, name)}"]

    def build_in_background(self) -> threading.Thread | None:
        """Build the archive from the recorded lists (if there are some and none exists)."""
        if self.ready() or not glob.glob(os.path.join(self.root, f"{self.key}-*{_LIST_SUFFIX}")):
            return None
        t = threading.Thread(target=self._build, name="sideband-spark-cds", daemon=True)
        _builds.append(t)
        t.start()
        return t

    def _build(self) -> None:
        with _locked(os.path.join(self.root, f"{self.key}.lock")) as mine:
            if not mine or self.ready():
                return  # another process builds it (or just did)
            lists = sorted(glob.glob(os.path.join(self.root, f"{self.key}-*{_LIST_SUFFIX}")))
            pid = os.getpid()
            merged = os.path.join(self.root, f"{self.key}.merged-p{pid}{_LIST_SUFFIX}.tmp")
            tmp = os.path.join(self.root, f"{self.key}.jsa-p{pid}.tmp")
            try:
                with open(merged, "w") as out:
                    out.writelines(f"{name}\n" for name in _class_names(lists))
                argv = [self.java, "-Xshare:dump", f"-XX:SharedClassListFile={merged}"]
                argv += [f"-XX:SharedArchiveFile={tmp}", "-cp", self.classpath, *self.modules]
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_background_child,
                    timeout=600,
                )
                if done.returncode == 0 and os.path.getsize(tmp) > 0:
                    os.replace(tmp, self.path)
            except (OSError, subprocess.SubprocessError):
                pass  # no archive: JVMs keep starting without one, and a later gang retries
            finally:
                for path in [merged, tmp, *lists]:
                    with contextlib.suppress(OSError):
                        os.remove(path)
        prune(self.root, keep=self.path)


def _class_names(lists: list[str]) -> Iterator[str]:
    """Class names of the recorded lists, once each: ids and lambda-proxy lines are per JVM (a
    merged list with them would clash), and a list cut off by a kill may end mid-line."""
    seen: set[str] = set()
    for path in lists:
        try:
            with open(path, errors="replace") as f:
                lines = f.read().split("\n")[:-1]  # the last piece is "" or cut off
        except OSError:
            continue
        for line in lines:
            if not line or line.startswith(("@", "#")) or " super:" in line:
                continue
            name = line.split(" ", 1)[0]
            if name not in seen:
                seen.add(name)
                yield name


@contextlib.contextmanager
def _locked(path: str) -> Iterator[bool]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _background_child() -> None:
    """The dump runs niced, and dies with the thread that waits for it."""
    os.nice(10)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def prune(where: str, keep: str | None = None) -> None:
    """Leave at most :data:`KEEP` archives (least recently used go first); remove temporary
    files of processes that are gone and class lists nobody built from within a day."""
    old = time.time() - _LIST_MAX_AGE_S
    for path in glob.glob(os.path.join(where, f"*{_LIST_SUFFIX}")):
        if _mtime(path) < old:  # a driver that died before it released its gang
            with contextlib.suppress(OSError):
                os.remove(path)
    for path in glob.glob(os.path.join(where, "*.tmp")):
        m = _PID.search(os.path.basename(path))
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(path)
        except (ValueError, PermissionError):
            continue
    archives = sorted(glob.glob(os.path.join(where, "*.jsa")), key=_mtime, reverse=True)
    for path in [p for p in archives if p != keep][KEEP - 1 if keep else KEEP :]:
        with contextlib.suppress(OSError):
            os.remove(path)
            os.remove(path[: -len(".jsa")] + ".lock")


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def wait_builds(timeout_s: float | None = None) -> None:
    """Wait for this process's background builds (tests and benchmarks, before they measure)."""
    for t in list(_builds):
        t.join(timeout_s)
        if not t.is_alive():
            _builds.remove(t)


def for_command(argv: list[str], conf_mark: str, conf_dir: str | None = None) -> Archive | None:
    """The archive for a Spark daemon's ``java`` command line whose classpath starts with
    ``conf_mark`` (the conf dir: the shared one, or ``conf_dir``, e.g. the driver's); None if CDS
    cannot be used."""
    where = root()
    if where is None or "-cp" not in argv[:-1]:
        return None
    cp = argv[argv.index("-cp") + 1]
    if not cp.startswith(conf_mark + os.pathsep):
        return None
    if conf_dir is None:
        conf_dir = Archive.conf_dir(where)
    elif os.path.isdir(conf_dir) and not conf_dir.endswith(os.sep):
        conf_dir += os.sep  # what Spark's launcher writes for a directory
    cp = conf_dir + cp[len(conf_mark) :]
    modules = [a for a in argv if a.startswith("--add-modules")]
    return Archive(argv[0], cp, modules, where)
