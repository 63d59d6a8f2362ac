"""The guard's error points to the sideband transport for passing tensors by ref."""

from __future__ import annotations

import pytest

import sideband
from sideband import guard


def test_out_of_band_ref_error_names_the_transport(ray_session: None) -> None:
    import ray

    ref = ray.put(1)
    with pytest.raises(sideband.OutOfBandRefError) as info:
        guard.dumps({"nested": [ref]}, where="send to rank 1")
    text = str(info.value)
    assert text.startswith("send to rank 1:")
    assert 'tensor_transport="sideband"' in text
    assert "sideband.rdt.register()" in text
    assert "docs/objectrefs.md" in text
    assert "allow_object_refs()" in text
