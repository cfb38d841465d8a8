"""The GFW mechanisms, one module each; importing this package registers the built-ins."""

from gfwlab.mechanisms import dns_injection, esni, fet, http_keyword, null_route, tls_sni
from gfwlab.mechanisms.base import Mechanism, register_mechanism, registry

__all__ = [
    "Mechanism",
    "dns_injection",
    "esni",
    "fet",
    "http_keyword",
    "null_route",
    "register_mechanism",
    "registry",
    "tls_sni",
]
