"""Types of the compiled module gfwlab._craft (_craft.c says what it does)."""

def udp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    ip_id: int,
    df: bool,
    /,
) -> bytes | None: ...
def tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    byte12: int,
    flags: int,
    window: int,
    options: bytes,
    payload: bytes,
    ttl: int,
    ip_id: int,
    df: bool,
    bad_checksum: bool,
    /,
) -> bytes | None: ...
