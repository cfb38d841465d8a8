"""The engine's per-flow shortcuts compute exactly what the plain code they replaced computes.

Each one is checked against the reference it stands in for (``benchmarks/bench_engine.py``
measures what they save): the entropy of a first packet, prefix lookups, the QUIC Initial key
derivation's HMAC, and the Shadowsocks candidate test that lets the entropy go unmeasured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import random
from collections import Counter

import pytest

from gfwlab.mechanisms.ss_probing import SsProbing, SsProbingParams, entropy
from gfwlab.proto import quic_build
from gfwlab.rules.schema import Prefixes


def _entropy_reference(data: bytes) -> float:
    """The definition, summed in byte-value order (the float the events carry)."""
    n = len(data)
    return -sum(c / n * math.log2(c / n) for _b, c in sorted(Counter(data).items()))


def test_entropy_is_the_same_float_as_the_definition() -> None:
    rng = random.Random(12)
    payloads = [b"", b"\x00", b"a" * 999, bytes(range(256)) * 4]
    for _ in range(400):
        size = rng.choice((1, 7, 60, 160, 400, 999, 1400))
        alphabet = rng.choice((2, 16, 64, 256))
        payloads.append(bytes(rng.randrange(alphabet) for _ in range(size)))
    for data in payloads:
        expected = _entropy_reference(data) if data else 0.0
        assert entropy(data) == expected, data[:16]


def _reference_contains(networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                        addr: bytes) -> bool:  # fmt: skip
    ip = ipaddress.ip_address(addr)
    return any(ip.version == net.version and ip in net for net in networks)


@pytest.mark.parametrize(
    "nets",
    [
        ("10.0.0.0/8", "198.18.0.0/15", "1.2.3.4/32"),
        ("2001:db8::/32", "::/0"),
        ("0.0.0.0/0", "2001:db8:5:100::/56", "203.0.113.0/24"),
    ],
)
def test_prefixes_match_as_ipaddress_does(nets: tuple[str, ...]) -> None:
    networks = tuple(ipaddress.ip_network(n) for n in nets)
    prefixes = Prefixes(networks)
    rng = random.Random(3)
    addrs: list[bytes] = []
    for net in networks:  # each network's first and last address, and the one after it
        size, last = len(net.network_address.packed), int(net.broadcast_address)
        after = (last + 1) % (1 << (8 * size))
        addrs += [net.network_address.packed, net.broadcast_address.packed]
        addrs.append(after.to_bytes(size, "big"))
    for _ in range(3000):
        size = rng.choice((4, 16))
        base = rng.choice(networks).network_address.packed
        if len(base) == size and rng.random() < 0.5:
            addrs.append(base[: size // 2] + rng.randbytes(size - size // 2))
        else:
            addrs.append(rng.randbytes(size))
    for addr in addrs:
        assert prefixes.contains(addr) == _reference_contains(networks, addr), addr.hex()
    assert not Prefixes().contains(b"\x0a\x00\x00\x01")
    with pytest.raises(ValueError):
        prefixes.contains(b"\x01\x02\x03")  # neither IPv4 nor IPv6, as before


def test_quic_hmac_is_hmac_sha256() -> None:
    rng = random.Random(5)
    for _ in range(500):
        key = rng.randbytes(rng.randrange(65))
        msg = rng.randbytes(rng.randrange(200))
        assert quic_build._hmac(quic_build._keyed(key), msg) == hmac.digest(
            key, msg, hashlib.sha256
        )


def test_ss_candidate_test_gives_the_same_chance() -> None:
    """A first packet that is no candidate draws nothing and has chance 0 (its entropy is then
    left unmeasured by on_first_data); a candidate's chance is unchanged."""
    mech = SsProbing(SsProbingParams(), seed=1)
    rng = random.Random(9)
    samples = [b"\x16\x03\x01" + rng.randbytes(300), b"GET / HTTP/1.1\r\n" + bytes(300)]
    samples += [rng.randbytes(n) for n in (10, 159, 160, 500, 700, 701, 999, 1000, 1400)]
    for payload in samples:
        chance, h = mech.chance(payload)
        assert h == _entropy_reference(payload)
        if not mech.candidate(payload):
            assert chance == 0.0
        else:
            assert chance > 0.0
