"""tls_in_tls (spec §14h), a hypothesis: off by default; when on, flows whose first flights look
like a TLS handshake inside a tunnel are detected, and the per-server policy blocks the port,
then the address, after K detections. Every event says ``evidence: hypothesis``."""

from __future__ import annotations

from gfwlab.packet.ip import ACK, PSH, SYN, addr_bytes, build_tcp
from gfwlab.profiles import build_censor, load_profile
from helpers import Run, profile, run

C, S = "198.18.0.2", "198.19.0.2"
ON = ("tls_in_tls.enabled=true", "tls_in_tls.block_after=2")
TUNNEL = (517, 1800, 1248, 1992, 102, 900)
"""Outer ClientHello, outer server handshake, outer Finished + inner ClientHello, inner server
handshake, inner Finished + request, response."""
PLAIN = (517, 1813, 225, 1400, 31, 600, 146, 900)
"""curl in the lab with a larger response."""
"""HTTPS: ClientHello, server handshake, Finished + request, response, SETTINGS ack."""
BROWSER = (1951, 2144, 621, 729, 197, 115, 600, 120)
"""Headless Chromium's flights in the lab (a small page: its first response is smaller than a
certificate-bearing handshake)."""


def _flow(
    flights: tuple[int, ...], *, cport: int, sport: int = 443, t0: float = 0.0, server: str = S
) -> list[tuple[float, bytes]]:
    c, s = addr_bytes(C), addr_bytes(server)
    seq_c, seq_s, t = 1000, 5000, t0
    out = [(t, build_tcp(c, s, cport, sport, seq=seq_c, flags=SYN))]
    out.append(
        (t + 0.001, build_tcp(s, c, sport, cport, seq=seq_s, ack=seq_c + 1, flags=SYN | ACK))
    )
    seq_c, seq_s, t = seq_c + 1, seq_s + 1, t + 0.002
    for i, size in enumerate(flights):
        client = i % 2 == 0
        left = size
        while left:
            n = min(left, 1448)
            if client:
                out.append(
                    (
                        t,
                        build_tcp(
                            c,
                            s,
                            cport,
                            sport,
                            seq=seq_c,
                            ack=seq_s,
                            flags=PSH | ACK,
                            payload=b"\x17" * n,
                        ),
                    )
                )
                seq_c += n
            else:
                out.append(
                    (
                        t,
                        build_tcp(
                            s,
                            c,
                            sport,
                            cport,
                            seq=seq_s,
                            ack=seq_c,
                            flags=PSH | ACK,
                            payload=b"\x17" * n,
                        ),
                    )
                )
                seq_s += n
            left -= n
            t += 0.0005
        t += 0.01
    return out


def _go(packets: list[tuple[float, bytes]], *sets: str) -> Run:
    return run(build_censor(profile(*sets)), packets)


def test_off_by_default_changes_nothing() -> None:
    assert "tls_in_tls" not in load_profile("gfw").active()
    packets = _flow(TUNNEL, cport=40000)
    r = _go(packets)
    assert not r.acted(mechanism="tls_in_tls") and all(r.verdicts)
    # The same flow through a profile without the mechanism at all gives the same verdicts.
    bare = _go(packets, "tls_in_tls.enabled=false")
    assert bare.verdicts == r.verdicts and bare.bypassed == r.bypassed


def test_tunnel_detected_plain_https_not() -> None:
    # The flights after the inner handshake repeat its pattern: the flow still counts once.
    r = _go(_flow(TUNNEL + TUNNEL[1:], cport=40000), *ON)
    (event,) = r.acted(mechanism="tls_in_tls")
    fields = event.as_dict()
    assert fields["evidence"] == "hypothesis" and fields["action"] == "pass"
    assert fields["flights"] == list(TUNNEL[:5]) and fields["blocked"] == "none"
    assert not _go(_flow(PLAIN, cport=40001), *ON).acted(mechanism="tls_in_tls")
    assert not _go(_flow(BROWSER, cport=40002), *ON).acted(mechanism="tls_in_tls")
    # The outer server's tickets split the client's second flight: found one flight pair later.
    split = (517, 1800, 80, 520, 1248, 1992, 102, 900)
    (event,) = _go(_flow(split, cport=40003), *ON).acted(mechanism="tls_in_tls")
    assert event.as_dict()["flights"] == list(split[:7])


def test_port_then_address_blocked_after_k_detections() -> None:
    packets: list[tuple[float, bytes]] = []
    for k in range(2):  # K = 2 detections on port 443: the port is blocked
        packets += _flow(TUNNEL, cport=40000 + k, t0=k * 1.0)
    packets += _flow(PLAIN, cport=40100, t0=3.0)  # another flow to the blocked port
    packets += _flow(PLAIN, cport=40101, t0=4.0, sport=80)  # another port of the address
    for k in range(2):  # the user moves the proxy to port 8443: the address is blocked
        packets += _flow(TUNNEL, cport=40200 + k, t0=5.0 + k, sport=8443)
    packets += _flow(PLAIN, cport=40300, t0=8.0, sport=80)
    r = _go(packets, *ON)
    events = [e.as_dict() for e in r.acted(mechanism="tls_in_tls")]
    assert [e["blocked"] for e in events if e["action"] != "null-route" or "flights" in e] == [
        "none",
        "port",
        "none",
        "address",
    ]
    assert all(e["evidence"] == "hypothesis" for e in events if "flights" in e)
    drops = [
        (e.flow.dport, e.action)
        for e in r.acted(mechanism="tls_in_tls")
        if "flights" not in e.as_dict()
    ]
    assert (443, "null-route") in drops  # the later flow to port 443
    assert (80, "null-route") in drops  # port 80 only after the address was blocked
    first_port80 = [e for e in r.acted(mechanism="tls_in_tls") if e.flow.dport == 80]
    assert all(e.ts >= 8.0 for e in first_port80)


def test_a_trace_idle_past_the_window_starts_over_whether_or_not_it_was_swept() -> None:
    """A tunnel's first flights, then 700 s of silence (longer than ``window_s``), then its
    last flights on the same 4-tuple: the trace starts over, both when the mechanism last swept
    stale traces too early to drop it and when it sweeps at the trace's return. (The sweep only
    frees memory: its timing, which depends on other flows, must not change a verdict, or a
    capture split into parts would not give one engine's answer.)"""
    whole = _flow(TUNNEL, cport=40001)
    cut = 2 + 1 + 2 + 1  # the handshake, then flights of 517, 1800 and 1248 bytes
    early = whole[:cut]
    late = [(t + 700.0, p) for t, p in whole[cut:]]
    # Another flow at 600 s: the mechanism sweeps then (the window has passed since its last
    # sweep), while the tunnel's trace is not yet idle for the window, so it is kept.
    other = _flow((517,), cport=40002, t0=600.0, server="198.19.0.99")
    alone = _go([*early, *late], *ON)
    swept = _go(sorted([*early, *other, *late], key=lambda tp: tp[0]), *ON)
    mine = [e for e in swept.acted(mechanism="tls_in_tls") if e.flow.sport == 40001]
    assert [e.as_dict() for e in alone.acted(mechanism="tls_in_tls")] == [e.as_dict() for e in mine]
