"""``python -m sideband.bench.collectives``: the same as ``sideband bench collectives``."""

from __future__ import annotations

import sys

from sideband.bench.collectives.cli import main

if __name__ == "__main__":
    sys.exit(main())
