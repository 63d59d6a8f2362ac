# The C hot loops of shared-memory waits (_native.c).
from _typeshed import ReadableBuffer, WriteableBuffer

HAVE_FUTEX: int

def futex_wait(addr: int, expected: int, timeout_s: float, /) -> None: ...
def futex_wake(addr: int, /) -> None: ...
def ring(bell_addr: int, sleeping_addr: int, /) -> None: ...
def settle(cpu: int, /) -> bool: ...
def yield_until(addr: int, seen: int, budget_s: float, /) -> bool: ...
def publish(
    table: bytes,
    rank: int,
    slot: int,
    step: int,
    seq: int,
    desc: int,
    payload: ReadableBuffer,
    slot_bytes: int,
    /,
) -> None: ...
def wait_slots(
    table: bytes,
    rank: int,
    slot: int,
    step: int,
    seq: int,
    desc: int,
    expect: int,
    slot_bytes: int,
    sizes: WriteableBuffer,
    abort_addr: int,
    budget_s: float,
    /,
) -> int: ...
def reduce_slots(
    table: bytes, slot: int, offset: int, slot_bytes: int, code: int, out: WriteableBuffer, /
) -> bool: ...
def gather_slots(table: bytes, slot: int, slot_bytes: int, out: WriteableBuffer, /) -> None: ...
