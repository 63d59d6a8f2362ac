"""Typed HTTP (issue 17 item 3): dataclasses, enums, datetimes, UUIDs, pydantic models,
Annotated constraints, the OpenAPI 3.1 document (validated, then fuzzed with schemathesis)."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Annotated

import pytest
import ray
from endpoint_helpers import request

import sideband
from sideband.http import Param

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_typed.py"


def _load_example() -> ModuleType:
    from ray import cloudpickle

    if "example_http_typed" in sys.modules:
        return sys.modules["example_http_typed"]
    spec = importlib.util.spec_from_file_location("example_http_typed", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # actors cannot import examples/
    return module


def test_typed_example(ray_session: None) -> None:
    out = _load_example().main()
    assert out["created"] == 201
    stored = out["stored"]
    assert uuid.UUID(stored["id"]) and stored["item"] == {
        "name": "hammer",
        "price": 9.5,
        "kind": "tool",
        "tags": [],
    }
    assert [d["loc"] for d in out["bad"]["detail"]] == [
        ["body", "name"],
        ["body", "price"],
        ["body", "kind"],
    ]
    assert out["missing"][0] == 404 and out["missing"][1]["detail"].startswith("no item")
    assert [s["id"] for s in out["found"]] == [stored["id"]]
    assert out["events"] == (
        'event: count\nid: 0\ndata: {"count":1}\n\nevent: count\nid: 1\ndata: {"count":1}\n\n'
    )
    assert out["echo"] == "echo: hello"
    assert out["count"] == 1


pydantic = pytest.importorskip("pydantic")


class Order(pydantic.BaseModel):
    sku: str = pydantic.Field(min_length=3, max_length=12)
    qty: int = pydantic.Field(gt=0)
    note: str | None = None


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Shop:
    def __init__(self) -> None:
        self.orders: list[Order] = []

    @sideband.http.post("/orders")
    def order(self, order: Order) -> Order:
        self.orders.append(order)
        return order

    @sideband.http.get("/orders/{index}")
    def get_order(self, index: Annotated[int, Param(ge=0, le=1000)]) -> Order:
        if index >= len(self.orders):
            raise sideband.http.HTTPError(404, "no such order")
        return self.orders[index]

    @sideband.http.get("/quote")
    def quote(
        self,
        qty: Annotated[int, Param(gt=0, le=10_000)],
        code: Annotated[str, Param(pattern=r"^[A-Z]{3}$")] = "EUR",
        rush: bool = False,
    ) -> dict[str, float]:
        return {"total": qty * (2.5 if rush else 2.0)}

    @sideband.http.put("/notes/{key}")
    def note(
        self, key: str, text: Annotated[str, Param(max_length=100)], ttl_s: float | None = None
    ) -> dict:
        return {"key": key, "len": len(text)}


@pytest.fixture(scope="module")
def shop(ray_session: None):
    a = Shop.remote()
    yield a
    ray.kill(a)


def test_pydantic_and_constraints(shop) -> None:
    url = sideband.http.url(shop)
    assert request(url + "/orders", {"sku": "abc", "qty": 2}) == (
        200,
        {"sku": "abc", "qty": 2, "note": None},
    )
    status, body = request(url + "/orders", {"sku": "a", "qty": 0})
    assert status == 422
    assert [(d["loc"], d["type"]) for d in body["detail"]] == [
        (["body", "sku"], "string_too_short"),
        (["body", "qty"], "greater_than"),
    ]
    assert request(url + "/orders/0")[1]["sku"] == "abc"
    status, body = request(url + "/orders/5000")
    assert status == 422 and body["detail"][0]["type"] == "less_than_equal"
    assert request(url + "/quote?qty=3&rush=yes") == (200, {"total": 7.5})
    status, body = request(url + "/quote?qty=3&code=eur")
    assert status == 422 and body["detail"][0]["type"] == "string_pattern_mismatch"


def _openapi(url: str) -> dict:
    status, doc = request(url + "/-/openapi.json")
    assert status == 200
    return doc


def test_openapi_document_is_valid(shop, ray_session: None) -> None:
    from openapi_spec_validator import validate

    doc = _openapi(sideband.http.url(shop))
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    quote = doc["paths"]["/quote"]["get"]
    params = {p["name"]: p for p in quote["parameters"]}
    assert params["qty"]["schema"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": 10000}
    assert params["code"]["schema"]["pattern"] == "^[A-Z]{3}$" and not params["code"]["required"]
    body = doc["paths"]["/orders"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert doc["components"]["schemas"]["Order"]["properties"]["qty"]["exclusiveMinimum"] == 0
    assert "422" in doc["paths"]["/orders"]["post"]["responses"]
    example = _load_example()
    inv = example.Inventory.remote()
    try:
        doc = _openapi(sideband.http.url(inv))
        validate(doc)
        schemas = doc["components"]["schemas"]
        assert schemas["Kind"] == {"title": "Kind", "enum": ["tool", "part"], "type": "string"}
        assert schemas["Stored"]["properties"]["id"] == {"type": "string", "format": "uuid"}
        assert schemas["Item"]["properties"]["name"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": 40,
        }
        events = doc["paths"]["/events"]["get"]["responses"]["200"]["content"]
        assert list(events) == ["text/event-stream"]
    finally:
        ray.kill(inv)


def _fuzz(url: str, max_examples: int) -> dict[str, int]:
    """Every operation of the endpoint, schemathesis cases valid and invalid: never a 5xx."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(_openapi(url))
    seen: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz_one(url, op, mode, max_examples, seen)()
    return seen


def _fuzz_one(url: str, op, mode, max_examples: int, seen: dict[str, int]):  # noqa: ANN001, ANN202
    from hypothesis import HealthCheck, given, settings

    label = f"{op.method.upper()} {op.path} {mode.value}"

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:  # noqa: ANN001
        response = case.call(base_url=url, timeout=10)
        key = f"{label} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        assert response.status_code < 500, (case.as_curl_command(), response.text)

    return run


def test_schemathesis_finds_no_5xx(shop, ray_session: None) -> None:
    seen = _fuzz(sideband.http.url(shop), max_examples=25)
    assert any(" positive 200" in k for k in seen) and any(" 422" in k for k in seen)
    inv = _load_example().Inventory.remote()
    try:
        seen = _fuzz(sideband.http.url(inv), max_examples=25)
        assert any(k.startswith("POST /items positive 201") for k in seen), seen
    finally:
        ray.kill(inv)
    print(json.dumps(seen, indent=1))
