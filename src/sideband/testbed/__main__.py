"""``python -m sideband.testbed probe|cleanup``: can this machine run netns mode; remove what
test beds of dead processes left behind (their namespaces and the processes inside them)."""

from __future__ import annotations

import sys

from sideband.testbed import _sys


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "probe"
    if cmd == "probe":
        why = _sys.netns_unavailable()
        print("netns mode available" if why is None else f"local mode only: {why}")
        return 0
    if cmd == "cleanup":
        removed = _sys.remove_stale_namespaces()
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
