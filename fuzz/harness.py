"""Fuzz targets: one per dissector, one per capture reader, one for ``Censor.feed``.

Each target takes the fuzzer's bytes and checks a contract; any other outcome raises
:class:`ContractBroken` (or lets the unexpected exception through), which the fuzzer reports as a
crash. The contracts (STYLE.md §5, §7; errors.py):

- a dissector (``gfwlab.engine.dissect.DISSECTORS``) returns a parsed message whose
  ``anomalies`` are dotted names, returns None (need more data, or not this protocol), or raises
  :class:`~gfwlab.errors.MalformedPacket` with a dotted ``kind`` of its protocol and an
  ``offset`` inside the input (``0 <= offset <= len(input)``); never another exception;
- a capture reader (``CaptureReader``: classic pcap, pcapng, every link type) opens or raises
  :class:`~gfwlab.errors.AdapterError`, yields ``(float, bytes)`` or raises ``AdapterError``; each
  packet it yields parses as IP or raises ``MalformedPacket``;
- ``Censor.feed`` and ``Censor.on_timer`` never raise, whatever the packets, and return a list
  whose first action is the packet's verdict.

The same targets run under atheris (``fuzz/run.py``, ``scripts/fuzz``) and under the tests
(``tests/test_fuzz.py``: the seed corpus, a short atheris run, the operation counts).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from gfwlab.engine.actions import Accept, Drop
from gfwlab.engine.dissect import DISSECTORS, Dissector, Options
from gfwlab.errors import AdapterError, MalformedPacket
from gfwlab.packet.ip import parse as parse_ip
from gfwlab.packet.pcap import CaptureReader
from gfwlab.proto.quic import CRYPTO_READINGS

KIND = re.compile(r"^[a-z0-9]+(\.[a-z0-9_]+)+$")
PROTOCOL_OF = {"tls": ("tls",), "http": ("http",), "dns": ("dns",), "quic": ("quic", "tls")}
"""The kinds a dissector may raise (a QUIC Initial carries a TLS ClientHello)."""


class ContractBroken(AssertionError):
    """A target returned or raised something its contract does not allow."""


def options_from(selector: int) -> Options:
    """Parser settings picked by one byte, so every mode is fuzzed from one corpus."""
    return Options(
        dns_name_limit=(253, 255, 63, 1)[selector & 3],
        tls_records=bool(selector & 4),
        dns_lenient=bool(selector & 8),
        quic_crypto_reading=CRYPTO_READINGS[(selector >> 4) % len(CRYPTO_READINGS)],
    )


def check_dissector(row: Dissector, data: bytes, options: Options) -> str:
    """Run one dissector on ``data``; return ``parsed``, ``need-more`` or ``malformed:KIND``."""
    try:
        parsed = row.parse(data, options)
    except MalformedPacket as exc:
        if not KIND.match(exc.kind) or exc.kind.split(".")[0] not in PROTOCOL_OF[row.name]:
            raise ContractBroken(f"{row.name}: bad kind {exc.kind!r}") from exc
        if not isinstance(exc.offset, int) or not 0 <= exc.offset <= len(data):
            raise ContractBroken(
                f"{row.name}: {exc.kind} offset {exc.offset} outside 0..{len(data)}"
            ) from exc
        return f"malformed:{exc.kind}"
    if parsed is None:
        return "need-more"
    anomalies = parsed.anomalies
    if not isinstance(anomalies, tuple) or not all(
        isinstance(a, str) and KIND.match(a) for a in anomalies
    ):
        raise ContractBroken(f"{row.name}: bad anomalies {anomalies!r}")
    return "parsed"


def dissector_target(name: str) -> Callable[[bytes], None]:
    """The target of one dissector: the first byte picks the parser settings."""
    row = next(d for d in DISSECTORS if d.name == name)

    def target(data: bytes) -> None:
        if not data:
            return
        check_dissector(row, data[1:], options_from(data[0]))

    target.__name__ = f"fuzz_{name}"
    return target


_SCRATCH: dict[str, Any] = {}


def _scratch_file() -> str:
    """One unlinked file per process (in a tmpfs if there is one), named through /proc, for the
    reader targets: nothing is left behind, also when libFuzzer ends the process."""
    if "path" not in _SCRATCH:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fh = tempfile.TemporaryFile(prefix="gfwlab-fuzz-", dir=base)  # noqa: SIM115
        _SCRATCH["file"] = fh
        _SCRATCH["path"] = f"/proc/self/fd/{fh.fileno()}"
    return str(_SCRATCH["path"])


def remove_scratch() -> None:
    fh = _SCRATCH.pop("file", None)
    _SCRATCH.pop("path", None)
    if fh is not None:
        fh.close()


def check_capture(data: bytes, limit: int = 4096) -> tuple[int, int]:
    """Read ``data`` as a capture file; return (packets yielded, of those that parsed as IP)."""
    path = _scratch_file()
    fh = _SCRATCH["file"]
    fh.seek(0)
    fh.truncate()
    fh.write(data)
    fh.flush()
    try:
        reader = CaptureReader(path)
    except AdapterError:
        return 0, 0
    yielded = parsed = 0
    try:
        with reader:
            for ts, packet in reader:
                if not isinstance(ts, float) or not isinstance(packet, bytes):
                    raise ContractBroken(f"reader yielded {type(ts)}, {type(packet)}")
                yielded += 1
                try:
                    parse_ip(packet)
                    parsed += 1
                except MalformedPacket as exc:
                    if not KIND.match(exc.kind) or not 0 <= exc.offset <= len(packet):
                        raise ContractBroken(f"ip: {exc.kind} at {exc.offset}") from exc
                if yielded >= limit:
                    break
    except AdapterError:
        pass
    return yielded, parsed


def capture_target(data: bytes) -> None:
    check_capture(data)


_CENSORS: dict[str, Any] = {}


def censor_for(profile: str = "gfw") -> Any:
    """A censor with every mechanism of ``profile`` active (built once per process)."""
    if profile not in _CENSORS:
        from gfwlab.profiles import build_censor, load_profile  # noqa: PLC0415

        _CENSORS[profile] = build_censor(load_profile(profile), 0)
    return _CENSORS[profile]


def split_packets(data: bytes, limit: int = 64) -> list[tuple[float, bytes]]:
    """Fuzzer bytes as at most ``limit`` packets: each is a 1-byte time step (centiseconds), a
    2-byte length and that many bytes; the last takes what is left."""
    out: list[tuple[float, bytes]] = []
    pos, now = 0, 0.0
    while pos + 3 <= len(data) and len(out) < limit:
        now += data[pos] / 100.0
        (length,) = struct.unpack_from("!H", data, pos + 1)
        pos += 3
        out.append((now, data[pos : pos + length]))
        pos += length
    return out


def join_packets(packets: list[tuple[float, bytes]], limit: int = 64) -> bytes:
    """The inverse of :func:`split_packets` (for seeds)."""
    out = bytearray()
    last = packets[0][0] if packets else 0.0
    for ts, pkt in packets[:limit]:
        step = min(255, max(0, round((ts - last) * 100)))
        last = ts
        out += bytes((step,)) + struct.pack("!H", min(len(pkt), 0xFFFF)) + pkt[:0xFFFF]
    return bytes(out)


def check_feed(censor: Any, data: bytes, base: float, limit: int = 64) -> int:
    """Feed the packets of ``data`` to ``censor`` from time ``base``; return the actions."""
    count = 0
    last = base
    for ts, packet in split_packets(data, limit):
        last = base + ts
        actions = censor.feed(packet, last)
        if not actions or not isinstance(actions[0], Accept | Drop):
            raise ContractBroken(f"feed returned {actions!r} without a verdict first")
        count += len(actions)
    deadline = censor.next_deadline()
    if deadline is not None:
        count += len(censor.on_timer(max(deadline, last)))
    return count


_CLOCK = {"now": 0.0}


def feed_target(data: bytes) -> None:
    censor = censor_for("gfw")
    # Time moves forward across inputs (the censor's clock never runs backwards); state carries
    # over, as it does live, so flows, residual blocks and timers are all exercised.
    _CLOCK["now"] += 1000.0
    check_feed(censor, data, _CLOCK["now"])


TARGETS: dict[str, Callable[[bytes], None]] = {
    **{d.name: dissector_target(d.name) for d in DISSECTORS},
    "capture": capture_target,
    "feed": feed_target,
}
"""Every fuzz target by name: the dissectors (tls, http, dns, quic), capture, feed."""
