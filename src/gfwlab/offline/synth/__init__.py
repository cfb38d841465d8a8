"""Synthetic traffic built with the project's own packet builder: scenarios, demos, benchmarks.

Whole captures of many conversations come from :func:`generate` (:mod:`.capture`, the
``gfwlab synth`` command); the functions here build single conversations for tests and demos.

Each function returns ``(timestamp, ip_packet)`` pairs for one conversation, as a capture on the
censor's link would hold them: a TCP handshake, the client's first flight, the server's answer
and a FIN exchange; a DNS query and its real answer; a QUIC-sized UDP exchange. Addresses are
text (IPv4 or IPv6); by default they come from the benchmarking range 198.18.0.0/15.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gfwlab.offline.synth.capture import FLOODS, MIXES, Mix, generate, load_names
from gfwlab.packet.ip import ACK, FIN, PSH, SYN, addr_bytes, build_tcp, build_udp
from gfwlab.proto.dns import build_query
from gfwlab.proto.tls import build_client_hello

__all__ = ["FLOODS", "MIXES", "Mix", "generate", "load_names"]

Packets = list[tuple[float, bytes]]

CLIENT = "198.18.0.2"
SERVER = "198.19.0.2"
RESOLVER = "198.19.0.53"


def tcp_conversation(
    client: str,
    server: str,
    cport: int,
    sport: int,
    first_flight: bytes | Iterable[bytes],
    *,
    t0: float = 0.0,
    rtt: float = 0.02,
    response: bytes = b"",
    isn_c: int = 1000,
    isn_s: int = 5000,
    syn: bool = True,
    close: bool = True,
) -> Packets:
    """A whole TCP connection; ``first_flight`` may be split into several segments."""
    c, s = addr_bytes(client), addr_bytes(server)
    segments = [first_flight] if isinstance(first_flight, bytes | bytearray) else list(first_flight)
    out: Packets = []
    t = t0
    if syn:
        out.append((t, build_tcp(c, s, cport, sport, seq=isn_c, flags=SYN, options=_MSS)))
        t += rtt / 2
        out.append(
            (
                t,
                build_tcp(
                    s, c, sport, cport, seq=isn_s, ack=isn_c + 1, flags=SYN | ACK, options=_MSS
                ),
            )
        )
        t += rtt / 2
        out.append((t, build_tcp(c, s, cport, sport, seq=isn_c + 1, ack=isn_s + 1, flags=ACK)))
    cseq, sseq = isn_c + 1, isn_s + 1
    for seg in segments:
        t += 0.0005
        out.append(
            (
                t,
                build_tcp(
                    c, s, cport, sport, seq=cseq, ack=sseq, flags=PSH | ACK, payload=bytes(seg)
                ),
            )
        )
        cseq += len(seg)
    if response:
        t += rtt / 2
        out.append(
            (
                t,
                build_tcp(
                    s, c, sport, cport, seq=sseq, ack=cseq, flags=PSH | ACK, payload=response
                ),
            )
        )
        sseq += len(response)
        t += rtt / 2
        out.append((t, build_tcp(c, s, cport, sport, seq=cseq, ack=sseq, flags=ACK)))
    if close:
        t += 0.001
        out.append((t, build_tcp(c, s, cport, sport, seq=cseq, ack=sseq, flags=FIN | ACK)))
        t += rtt / 2
        out.append((t, build_tcp(s, c, sport, cport, seq=sseq, ack=cseq + 1, flags=FIN | ACK)))
        t += rtt / 2
        out.append((t, build_tcp(c, s, cport, sport, seq=cseq + 1, ack=sseq + 1, flags=ACK)))
    return out


_MSS = b"\x02\x04\x05\xb4"


def http_get(host: str, path: str = "/", *, extra: str = "") -> bytes:
    """A minimal HTTP/1.1 GET request."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        f"{extra}\r\n"
    ).encode()


def https_conversation(
    client: str,
    server: str,
    cport: int,
    sni: str | None,
    *,
    t0: float = 0.0,
    sport: int = 443,
    **hello: object,
) -> Packets:
    """A TLS connection whose first flight is a ClientHello naming ``sni``."""
    record = build_client_hello(sni, **hello)  # type: ignore[arg-type]
    return tcp_conversation(
        client,
        server,
        cport,
        sport,
        record,
        t0=t0,
        response=b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",
    )


def http_conversation(
    client: str,
    server: str,
    cport: int,
    host: str,
    path: str = "/",
    *,
    t0: float = 0.0,
    sport: int = 80,
) -> Packets:
    """An HTTP connection with one GET and a short 200 answer."""
    return tcp_conversation(
        client,
        server,
        cport,
        sport,
        http_get(host, path),
        t0=t0,
        response=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )


def dns_exchange(
    client: str,
    resolver: str,
    cport: int,
    name: str,
    *,
    qtype: int = 1,
    t0: float = 0.0,
    qid: int = 0x1234,
    answer: str | None = None,
    rtt: float = 0.03,
    ttl: int = 64,
) -> Packets:
    """A DNS query and (if ``answer`` is given) the resolver's real answer ``rtt`` later."""
    from gfwlab.proto.dns import build_answer, parse_query  # noqa: PLC0415

    c, r = addr_bytes(client), addr_bytes(resolver)
    query = build_query(name, qtype, id=qid)
    out: Packets = [(t0, build_udp(c, r, cport, 53, query, ttl=ttl))]
    if answer is not None:
        parsed = parse_query(query)
        assert parsed is not None
        real = build_answer(query, parsed, addr_bytes(answer), 300, 0x8180)
        out.append((t0 + rtt, build_udp(r, c, 53, cport, real)))
    return out


def merge(*conversations: Packets) -> Packets:
    """Interleave conversations by timestamp (stable)."""
    merged = [p for conv in conversations for p in conv]
    merged.sort(key=lambda tp: tp[0])
    return merged


def demo_traffic() -> Iterator[tuple[str, Packets]]:
    """The offline demo's scenarios: (what it shows, packets)."""
    yield (
        "DNS query for a blocked name (forged answers race the real one)",
        dns_exchange(CLIENT, RESOLVER, 40001, "www.google.com", t0=0.0, answer="198.19.0.80"),
    )
    yield (
        "DNS query for an unblocked name",
        dns_exchange(CLIENT, RESOLVER, 40002, "example.org", t0=0.5, answer="198.19.0.80"),
    )
    yield (
        "HTTPS to a blocked SNI (reset by an S&P'25 injector)",
        https_conversation(CLIENT, SERVER, 41001, "www.facebook.com", t0=1.0),
    )
    yield (
        "HTTPS again within the 180 s residual window",
        https_conversation(CLIENT, SERVER, 41002, "example.org", t0=3.0),
    )
    yield (
        "HTTPS to an unblocked SNI on another server",
        https_conversation(CLIENT, "198.19.0.3", 41003, "example.org", t0=4.0),
    )
    yield (
        "HTTPS with the ClientHello split across two TLS records (evades)",
        https_conversation(
            CLIENT, "198.19.0.4", 41004, "www.facebook.com", t0=5.0, record_split=40
        ),
    )
    yield (
        "HTTP GET with a blocked keyword in the path",
        http_conversation(
            CLIENT, "198.19.0.5", 42001, "example.org", "/search?q=ultrasurf", t0=6.0
        ),
    )
    yield (
        "HTTPS with an ESNI extension (dropped)",
        https_conversation(CLIENT, "198.19.0.6", 43001, None, t0=7.0, esni=True),
    )
