"""The censor's-view dissectors: they parse what the GFW parses, the way it parses it.

Each dissector keeps three outcomes apart (STYLE.md habit 5): ``None`` means "need more data"
(for DNS, which is not a stream: "not a query"), :class:`~gfwlab.errors.MalformedPacket` means the
bytes are not what they claim to be, and an unknown codepoint or an oddity is a value (an entry
in ``anomalies``). Spec sections: DNS §2 (:mod:`.dns`), HTTP §3 (:mod:`.http`), TLS §4
(:mod:`.tls`).
"""

from gfwlab.proto.dns import (
    DnsQuery,
    answer_type,
    build_answer,
    build_query,
    forged_flags,
    is_forged_answer,
    parse_query,
)
from gfwlab.proto.http import HttpRequest, parse_request
from gfwlab.proto.tls import (
    ClientHello,
    build_client_hello,
    parse_client_hello,
    parse_client_hello_body,
)

__all__ = [
    "ClientHello",
    "DnsQuery",
    "HttpRequest",
    "answer_type",
    "build_answer",
    "build_client_hello",
    "build_query",
    "forged_flags",
    "is_forged_answer",
    "parse_client_hello",
    "parse_client_hello_body",
    "parse_query",
    "parse_request",
]
