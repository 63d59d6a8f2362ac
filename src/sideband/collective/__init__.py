"""Drop-in replacement for ``ray.util.collective`` (see :mod:`sideband.collective.dropin`).

``import sideband.collective as col`` gives ray.util.collective's names; the collective core
lives in the subpackages, one layer each (see docs/architecture.md).
"""

from sideband.collective import dropin as _dropin
from sideband.collective.dropin import *  # noqa: F403
from sideband.collective.dropin import __all__ as __all__  # noqa: F401

__doc__ = _dropin.__doc__
