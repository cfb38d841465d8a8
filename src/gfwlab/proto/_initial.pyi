"""Types of the compiled module gfwlab.proto._initial (src/gfwlab/proto/_initial.c says what it
does)."""

def open_initial(
    datagram: bytes,
    pn_at: int,
    end: int,
    dcid: bytes,
    salt: bytes,
    key_label: bytes,
    iv_label: bytes,
    hp_label: bytes,
    /,
) -> tuple[int, int, int, bytes | None]: ...
