"""Captures for the flow table's limits, built with array operations (millions of packets).

* ``syn-flood``: N TCP SYNs from spoofed sources (random addresses in 198.18.0.0/15 and random
  ports) to one web server, 1,000,000 a second: N flows of one packet each.
* ``concurrent``: N connections opened over 10 s (a SYN each), then every server's SYN/ACK
  and the client's ACK, in the same order: N flows held at once.

Raw-IP classic pcap with nanosecond timestamps from 2024-06-01 00:00 UTC, correct IPv4 and TCP
checksums, deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gfwlab._outfile import OutputFile

T0 = 1_717_200_000
SERVER = (198 << 24) | (19 << 16) | 80  # 198.19.0.80
SYN, ACK = 0x02, 0x10
_CHUNK = 1_000_000

U32 = npt.NDArray[np.uint32]


def _fold(total: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint16]:
    while bool((total >> np.uint64(16)).any()):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return (~total.astype(np.uint16)).astype(np.uint16)


def _packets(
    ts_ns: npt.NDArray[np.int64],
    src: U32,
    dst: U32,
    sport: U32,
    dport: U32,
    seq: U32,
    ack: U32,
    flags: int,
) -> npt.NDArray[np.uint8]:
    """Records (pcap header and a 40-byte IPv4/TCP packet) for arrays of fields."""
    n = ts_ns.shape[0]
    rec = np.zeros((n, 56), dtype=np.uint8)
    head = rec[:, :16].view("<u4")
    head[:, 0] = (ts_ns // 1_000_000_000).astype(np.uint32)
    head[:, 1] = (ts_ns % 1_000_000_000).astype(np.uint32)
    head[:, 2] = 40
    head[:, 3] = 40
    ip = np.zeros((n, 20), dtype=np.uint8)
    words = ip.view(">u2")
    words[:, 0] = 0x4500
    words[:, 1] = 40
    words[:, 2] = (seq & 0xFFFF).astype(np.uint16)
    words[:, 3] = 0x4000
    words[:, 4] = (64 << 8) | 6
    addrs = ip[:, 12:20].view(">u4")
    addrs[:, 0] = src
    addrs[:, 1] = dst
    words[:, 5] = _fold(words.astype(np.uint64).sum(axis=1))
    tcp = np.zeros((n, 20), dtype=np.uint8)
    tw = tcp.view(">u2")
    tw[:, 0] = sport.astype(np.uint16)
    tw[:, 1] = dport.astype(np.uint16)
    tcp[:, 4:12].view(">u4")[:, 0] = seq
    tcp[:, 4:12].view(">u4")[:, 1] = ack
    tw[:, 6] = (5 << 12) | flags
    tw[:, 7] = 0xFFFF
    pseudo = (
        (src >> 16).astype(np.uint64)
        + (src & 0xFFFF)
        + (dst >> 16)
        + (dst & 0xFFFF)
        + np.uint64(6 + 20)
    )
    tw[:, 8] = _fold(tw.astype(np.uint64).sum(axis=1) + pseudo)
    rec[:, 16:36] = ip
    rec[:, 36:56] = tcp
    return rec


def write(out: str, mix: str, flows: int, seed: int) -> dict[str, Any]:
    """Write a ``syn-flood`` or ``concurrent`` capture of ``flows`` flows to ``out``."""
    rng = np.random.default_rng(seed)
    fh = OutputFile(out)
    try:
        fh.write(np.array([0xA1B23C4D, 0x00040002, 0, 0, 262_144, 101], dtype="<u4").tobytes())
        packets = 0
        for lo in range(0, flows, _CHUNK):
            n = min(_CHUNK, flows - lo)
            src = (np.uint32((198 << 24) | (18 << 16)) + rng.integers(0, 1 << 17, n)).astype(
                np.uint32
            )
            sport = rng.integers(1024, 65536, n).astype(np.uint32)
            isn = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
            dst = np.full(n, SERVER, dtype=np.uint32)
            dport = np.full(n, 80, dtype=np.uint32)
            zero = np.zeros(n, dtype=np.uint32)
            if mix == "syn-flood":
                ts = T0 * 1_000_000_000 + (lo + np.arange(n, dtype=np.int64)) * 1_000
            else:
                ts = T0 * 1_000_000_000 + (lo + np.arange(n, dtype=np.int64)) * (
                    10_000_000_000 // max(flows, 1)
                )
            fh.write(_packets(ts, src, dst, sport, dport, isn, zero, SYN).tobytes())
            packets += n
        if mix == "concurrent":  # replay the same draws for the answers, in the same order
            rng = np.random.default_rng(seed)
            for lo in range(0, flows, _CHUNK):
                n = min(_CHUNK, flows - lo)
                src = (np.uint32((198 << 24) | (18 << 16)) + rng.integers(0, 1 << 17, n)).astype(
                    np.uint32
                )
                sport = rng.integers(1024, 65536, n).astype(np.uint32)
                isn = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
                dst = np.full(n, SERVER, dtype=np.uint32)
                dport = np.full(n, 80, dtype=np.uint32)
                base = (T0 + 10) * 1_000_000_000 + (lo + np.arange(n, dtype=np.int64)) * (
                    10_000_000_000 // max(flows, 1)
                )
                sisn = (isn ^ np.uint32(0x5A5A5A5A)).astype(np.uint32)
                answer = _packets(base, dst, src, dport, sport, sisn, isn + 1, SYN | ACK)
                acks = _packets(base + 500, src, dst, sport, dport, isn + 1, sisn + 1, ACK)
                fh.write(np.stack((answer, acks), axis=1).tobytes())
                packets += 2 * n
        fh.commit()
    except BaseException:
        fh.abort()
        raise
    return {"packets": packets, "seed": seed, "mix": mix, "flows_started": flows,
            "packets_per_flow": round(packets / max(flows, 1), 1)}  # fmt: skip
