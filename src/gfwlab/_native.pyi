"""Types of the compiled module gfwlab._native (src/gfwlab/_native.c says what each does)."""

from typing import Any

import numpy as np
from typing_extensions import Buffer

_Buf = Buffer | np.ndarray[Any, Any]
"""A capture's bytes or a C-contiguous array; the functions write into the arrays they fill."""

def walk(
    buf: _Buf,
    off: int,
    stop: int,
    size: int,
    hlen: int,
    big: bool,
    cap: int,
    div: float,
    out: _Buf,
    ts: _Buf,
    /,
) -> tuple[int, int, bool]: ...
def links(buf: _Buf, mode: int, start: _Buf, end: _Buf, ip: _Buf, /) -> None: ...
def epbs(
    buf: _Buf,
    off: int,
    stop: int,
    size: int,
    big: bool,
    modes: _Buf,
    units: _Buf,
    tsoffset: _Buf,
    ts: _Buf,
    start: _Buf,
    end: _Buf,
    /,
) -> tuple[int, int]: ...
def classify(
    buf: _Buf,
    start: _Buf,
    length: _Buf,
    flow: _Buf,
    proto: _Buf,
    flags: _Buf,
    payload_len: _Buf,
    src: _Buf,
    dst: _Buf,
    /,
) -> None: ...
def flow_keys(proto: _Buf, src: _Buf, dst: _Buf, key: _Buf, lower: _Buf, /) -> None: ...
def lives(
    proto: _Buf,
    src: _Buf,
    dst: _Buf,
    keyed: _Buf,
    ts: _Buf,
    tcp_timeout: float,
    udp_timeout: float,
    life_of: _Buf,
    pos: _Buf,
    first: _Buf,
    count: _Buf,
    final_ts: _Buf,
    life_keyed: _Buf,
    /,
) -> int: ...
