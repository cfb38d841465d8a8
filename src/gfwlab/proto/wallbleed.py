"""The Wallbleed-era DNS injector's own reading of a query, over-reads included (spec §14f).

Source: Fan et al., *Wallbleed: A Memory Disclosure Vulnerability in the Great Firewall of
China*, NDSS 2025, Appendix B, and its artifact ``gfw-report/ndss25-wallbleed``
``blackbox/blackbox.c`` (the reverse-engineered injector, "Injector 3") with its test cases
``blackbox-tests.inc`` (the v1 era, to the first patch in Sep-Nov 2023) and
``blackbox-tests-patched.inc`` (the partly patched v2 era, to March 2024).

:func:`respond` is that injector's ``response()``: it walks the labels of the query in a
buffer that holds the query followed by whatever the injector's memory held after it, without
the bounds checks a correct parser has. A label may run past the datagram, the terminating zero
and QTYPE/QCLASS may be missing, a length byte 0xC0 is a 192-byte label: the bytes past the
datagram are then memory. The flattened name is a C string (a NUL ends it, a ``.`` inside a
label is a separator), at most 125 characters; the answer copies the buffer up to where the
name loop stopped, plus 4 bytes: whatever memory was read on the way is in the answer (the
leak, up to 125 bytes). :func:`injector_buffer` lays out the buffer as the artifact's harness
does: the first 18 bytes are zero before the query is copied in (the real injectors seem to do
it; it matters only for queries of 17 bytes or less), then the query, then memory.

``v1`` is the unpatched loop. ``v2`` is the first, incomplete patch: a label that does not fit
whole in the name buffer is skipped over (the position still advances, past the datagram if
need be) and ends the name, and QCLASS must be 1. ``fixed`` (from March 2024) answers only a
query whose name and QTYPE/QCLASS lie within the datagram (no leak); the mechanism uses the
bounds-checked :func:`gfwlab.proto.dns.parse_query` for it.

Nothing here draws or invents memory: the caller hands it in (the mechanism fills it from a
seeded generator of plausible memory content, never from the emulator's own memory).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from gfwlab._frozen import Frozen

Era = Literal["v1", "v2"]
NAME_BUF: Final = 126
"""The injector's name buffer, NUL included (blackbox.c)."""
ZEROED: Final = 18
"""Bytes of the buffer that are zero before the query is copied in (blackbox.c's harness)."""
TYPE_AAAA: Final = 28


@dataclass(frozen=True)
class Reading(Frozen):
    """What the injector made of one query."""

    name: bytes
    """The flattened name as the blocklist sees it: the C string (cut at the first NUL)."""
    qtype: int
    """The word read at ``qname_end`` as QTYPE (AAAA gives an AAAA answer, anything else A)."""
    qclass: int
    """The word read as QCLASS (v2 answers only class 1)."""
    copied: bytes
    """What the answer copies from the buffer: up to where the name loop stopped, plus 4."""
    overread: int
    """How many copied bytes lie past the datagram (the leaked memory)."""


def injector_buffer(query: bytes, memory: bytes) -> bytes:
    """The injector's working buffer: the query over 18 zero bytes, then ``memory``."""
    head = query + bytes(max(0, ZEROED - len(query)))
    return head + memory[len(head) - len(query) :]


def read_query(buffer: bytes, udp_len: int, era: Era) -> Reading | None:
    """The injector's parse of the query in ``buffer`` (``udp_len`` bytes are the datagram).

    None for fewer than 12 bytes or a response (QR=1). The buffer must extend at least 260
    bytes past ``udp_len`` (a label and QTYPE/QCLASS can overrun that far).
    """
    if udp_len < 12 or buffer[2] & 0x80:
        return None
    if len(buffer) < udp_len + 260:
        raise ValueError("the buffer must hold 260 bytes past the datagram")
    name = bytearray()
    i = 12
    qname_end = i
    while True:
        label_len = buffer[i]  # read before any bounds check: a 1-byte over-read
        i += 1
        qname_end = i
        if label_len == 0 or i > udp_len:
            break
        if era == "v1":
            if len(name) + 3 > NAME_BUF:
                break
        else:
            i += min(label_len, NAME_BUF - 1 - len(name) - 1)
            if len(name) + 1 + label_len + 1 > NAME_BUF:
                break
        if name:
            name.append(0x2E)
        room = NAME_BUF - 1 - len(name)
        n = min(label_len, room)
        name += buffer[qname_end : qname_end + n]
        if era == "v1":
            i += n
            if n < label_len:
                break
    qtype, qclass = struct.unpack_from("!HH", buffer, qname_end)
    nul = name.find(0)
    flat = bytes(name if nul < 0 else name[:nul])
    copied = buffer[: i + 4]
    return Reading(flat, qtype, qclass, copied, max(0, len(copied) - udp_len))


def respond(
    query: bytes,
    memory: bytes,
    era: Era,
    censored: Callable[[str], bool],
    answer: Callable[[int], tuple[bytes, int]],
) -> bytes | None:
    """The forged answer's DNS payload for ``query``, or None if the injector stays silent.

    ``censored(name)`` is the blocklist (on the flattened, lower-cased, latin-1 name);
    ``answer(qtype)`` gives the (address, TTL) to answer with (4 or 16 bytes).
    """
    reading = read_query(injector_buffer(query, memory), len(query), era)
    if reading is None:
        return None
    if not censored(reading.name.lower().decode("latin-1")):
        return None
    if era == "v2" and reading.qclass != 1:
        return None
    return build(reading, *answer(reading.qtype))


def build(reading: Reading, addr: bytes, ttl: int) -> bytes:
    """The injector's answer: the copied bytes with the flags and counts rewritten, then
    ``c0 0c`` + A or AAAA + class 1 + TTL + the address."""
    out = bytearray(reading.copied)
    rd = out[2] & 0x01
    out[2:4] = b"\x81\x80" if rd else b"\x84\x00"
    out[4:12] = b"\x00\x01\x00\x01\x00\x00\x00\x00"
    rtype = TYPE_AAAA if reading.qtype == TYPE_AAAA else 1
    return bytes(out) + struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(addr)) + addr


def blocklist_regex(rules: list[str]) -> Callable[[str], bool]:
    """A matcher for blackbox.c-style POSIX regexes (for tests with the artifact's list)."""
    pattern = re.compile("|".join(f"(?:{r})" for r in rules), re.IGNORECASE)
    return lambda name: pattern.search(name) is not None
