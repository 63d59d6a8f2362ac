"""Generate and import the test Greeter service (sb_greeter.proto) in any process.

The code is generated at test time rather than committed, so that it always matches the
installed protobuf runtime. Actors import it through :func:`add_greeter`, which carries the
directory of the generated files with it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

PROTO = Path(__file__).with_name("sb_greeter.proto")


def generate(out_dir: str) -> str:
    """Run protoc (grpc_tools) into ``out_dir``; returns it."""
    from grpc_tools import protoc

    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO.parent}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return out_dir


def load(gen_dir: str) -> tuple[Any, Any]:
    """(sb_greeter_pb2, sb_greeter_pb2_grpc) from ``gen_dir``."""
    if gen_dir not in sys.path:
        sys.path.insert(0, gen_dir)
    return importlib.import_module("sb_greeter_pb2"), importlib.import_module("sb_greeter_pb2_grpc")


def add_greeter(gen_dir: str, servicer: Any, server: Any) -> None:
    """``add_GreeterServicer_to_server`` of the generated code (use with functools.partial)."""
    load(gen_dir)[1].add_GreeterServicer_to_server(servicer, server)
