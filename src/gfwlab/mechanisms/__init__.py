"""The GFW mechanisms, one module each; importing this package registers the built-ins."""

from gfwlab.mechanisms import (
    dns_injection,
    esni,
    fet,
    http_keyword,
    null_route,
    quic_sni,
    ss_probing,
    tls_sni,
)
from gfwlab.mechanisms.base import Mechanism, register_mechanism, registry

__all__ = [
    "Mechanism",
    "dns_injection",
    "esni",
    "fet",
    "http_keyword",
    "null_route",
    "quic_sni",
    "register_mechanism",
    "registry",
    "ss_probing",
    "tls_sni",
]
