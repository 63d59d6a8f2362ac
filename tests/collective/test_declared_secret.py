"""A group's HMAC secret leaves Ray's KV once the group forms, fails to form or is destroyed.

Issue 13, point 7: ``declare_group`` (behind the drop-in's ``create_collective_group``) wrote
``decl/<name>`` with the session record and its secret, and it outlived the group.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband
from sideband import _kv
from sideband.collective.api.driver import declare_group
from sideband.collective.rendezvous import session
from sideband.errors import RendezvousError


@pytest.fixture
def actors(ray_session):
    made: list = []

    def make(n: int) -> list:
        new = [Member.remote() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for a in made:
        ray.kill(a)


def _secrets_in_kv(name: str) -> list[str]:
    """Every KV key of group ``name`` that holds a secret (its declaration included)."""
    found = [k for k in _kv.keys(f"group/{name}/") if k.endswith("/secret")]
    rec = _kv.get(session.session_key(name))
    if rec is not None and "secret" in rec:
        found.append(session.session_key(name))
    if _kv.get(session.decl_key(name)) is not None:
        found.append(session.decl_key(name))
    return found


def _use(self, name):
    return sideband.get_group(name).allreduce(np.ones(2)).tolist()


def _destroy(self, name):
    sideband.destroy_group(name)


def _try_join(self, name):
    try:
        sideband.get_group(name)
    except RendezvousError as e:
        return str(e)
    return "joined"


def test_declared_group_record_leaves_kv_once_formed(actors):
    ws = actors(2)
    declare_group(ws, 2, [1, 0], name="decl-secret")
    assert session.decl_key("decl-secret") in _secrets_in_kv("decl-secret")  # while forming
    assert on_all(ws, _use, "decl-secret") == [[2.0, 2.0]] * 2
    assert _secrets_in_kv("decl-secret") == []
    # The group still works, and is listed, without its secret in the store.
    assert on_all(ws, _use, "decl-secret") == [[2.0, 2.0]] * 2
    assert [g["state"] for g in sideband.list_groups() if g["name"] == "decl-secret"] == ["ready"]
    on_all(ws, _destroy, "decl-secret")
    assert _kv.keys("group/decl-secret/") == [] and _kv.get(session.decl_key("decl-secret")) is None


def test_declared_group_never_joined_destroyed_from_driver(actors):
    ws = actors(2)
    h = declare_group(ws, 2, [0, 1], name="decl-unused")
    assert len(_secrets_in_kv("decl-unused")) == 2  # the secret key and the declaration
    h.destroy()
    assert _secrets_in_kv("decl-unused") == []
    assert _kv.keys("group/decl-unused/") == []
    # A member asking for it afterwards is not a member of anything.
    with pytest.raises(ray.exceptions.RayTaskError, match="not a member"):
        on_all(ws[:1], _use, "decl-unused")


def test_declared_group_that_fails_to_form_leaves_no_secret(actors):
    ws = actors(2)
    declare_group(ws, 2, [0, 1], name="decl-fails", timeout_s=1.0)
    # Rank 1 never asks for the group: rank 0 times out.
    (err,) = on_all(ws[:1], _try_join, "decl-fails")
    assert "timed out waiting for ranks [1]" in err
    assert _secrets_in_kv("decl-fails") == []


def test_dropin_declared_group_leaves_no_secret(actors):
    import sideband.collective as col
    from sideband.collective.types import Backend

    ws = actors(2)
    col.create_collective_group(ws, 2, [0, 1], Backend.GLOO, "decl-dropin")
    assert on_all(ws, _use, "decl-dropin") == [[2.0, 2.0]] * 2
    assert _secrets_in_kv("decl-dropin") == []
    on_all(ws, _destroy, "decl-dropin")


def _init(self, world, rank, name):
    return sideband.init_group(world, rank, name=name).allreduce(np.ones(1)).tolist()


def test_init_and_created_groups_drop_their_secret_once_formed(actors):
    ws = actors(2)
    assert ray.get([a.__ray_call__.remote(_init, 2, r, "init-secret") for r, a in enumerate(ws)])
    assert _secrets_in_kv("init-secret") == []
    on_all(ws, _destroy, "init-secret")
    h = sideband.create_group(ws, name="created-secret")
    assert _secrets_in_kv("created-secret") == []
    assert on_all(ws, _use, "created-secret") == [[2.0, 2.0]] * 2
    h.destroy()
