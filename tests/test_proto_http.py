"""Tests for gfwlab.proto.http: what the GFW's HTTP keyword filter reads (spec §3)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfwlab.errors import MalformedPacket
from gfwlab.proto.http import MAX_HEADER, HttpRequest, parse_request

FALUN_GB18030 = "法轮".encode("gb18030")  # b7 a8 c2 d6
FALUN_UTF8 = "法轮".encode()  # e6 b3 95 e8 bd ae


def pct(raw: bytes) -> str:
    return "".join(f"%{b:02X}" for b in raw)


SIMPLE = (
    b"GET /search?q=test HTTP/1.1\r\n"
    b"Host: WWW.Example.COM:8080\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Cookie: falun=1\r\n"
    b"\r\n"
)


def test_simple_request() -> None:
    req = parse_request(SIMPLE)
    assert req == HttpRequest(
        method="GET",
        target="/search?q=test",
        path="/search?q=test",
        host="www.example.com",
        texts=("/search?q=test", "www.example.com"),
        header_end=len(SIMPLE),
    )


def test_cookie_and_other_headers_not_inspected() -> None:
    req = parse_request(SIMPLE)
    assert req is not None
    assert not any("falun" in text for text in req.texts)
    assert not any("curl" in text for text in req.texts)


def test_percent_decoding_path_and_host() -> None:
    data = b"GET /a%20b/%7Euser/+x%zz HTTP/1.0\r\nhOsT: %77ww.example.org\r\n\r\n"
    req = parse_request(data)
    assert req is not None
    assert req.target == "/a%20b/%7Euser/+x%zz"
    assert req.path == "/a b/~user/+x%zz"  # '+' stays; a bad escape stays literal
    assert req.host == "www.example.org"


def test_gb18030_path_decoded_into_texts() -> None:
    data = f"GET /{pct(FALUN_GB18030)} HTTP/1.1\r\nHost: a.cn\r\n\r\n".encode()
    req = parse_request(data)
    assert req is not None
    # b7 a8 is not valid UTF-8, so the path reads as GB18030.
    assert req.path == "/法轮"
    assert "/法轮" in req.texts


def test_utf8_path_read_both_ways() -> None:
    data = f"GET /{pct(FALUN_UTF8)} HTTP/1.1\r\nHost: a.cn\r\n\r\n".encode()
    req = parse_request(data)
    assert req is not None
    assert req.path == "/法轮"
    # These bytes are also valid GB18030; the filter tries both readings (spec §3).
    gb_reading = "/" + FALUN_UTF8.decode("gb18030")
    assert req.texts == ("/法轮", gb_reading, "a.cn")


def test_raw_utf8_bytes_in_path() -> None:
    req = parse_request(b"GET /" + FALUN_UTF8 + b" HTTP/1.1\r\n\r\n")
    assert req is not None
    assert req.path == "/法轮"
    assert req.host is None


def test_neither_utf8_nor_gb18030_falls_back_to_latin1() -> None:
    req = parse_request(b"GET /%FF%FF HTTP/1.1\r\nHost: x\r\n\r\n")
    assert req is not None
    assert req.path == "/\xff\xff"
    assert req.texts == ("/\xff\xff", "x")


def test_gb18030_host() -> None:
    host = pct("法轮功.com".encode("gb18030"))
    req = parse_request(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert req is not None
    assert req.host == "法轮功.com"
    assert "法轮功.com" in req.texts


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b"example.com", "example.com"),
        (b"Example.com:80", "example.com"),
        (b"example.com:", "example.com"),
        (b"[2001:DB8::1]:443", "2001:db8::1"),
        (b"[2001:db8::1]", "2001:db8::1"),
        (b"2001:db8::1", "2001:db8::1"),
        (b"  spaced.example  ", "spaced.example"),
    ],
)
def test_host_port_stripping(value: bytes, host: str) -> None:
    req = parse_request(b"GET / HTTP/1.1\r\nHost:" + value + b"\r\n\r\n")
    assert req is not None
    assert req.host == host


def test_absolute_form_and_other_methods() -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    req = parse_request(data)
    assert req is not None
    assert (req.method, req.path, req.host) == ("CONNECT", "example.com:443", "example.com")
    req = parse_request(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n")
    assert req is not None
    assert req.method == "M-SEARCH" and req.host == "239.255.255.250"
    req = parse_request(b"GET http://falun.example/x HTTP/1.1\r\n\r\n")
    assert req is not None
    assert req.path == "http://falun.example/x"


def test_bare_lf_and_anomalies() -> None:
    data = b"GET / HTTP/1.1\nHost: first.example\nHost: second.example\nbogus\n folded\n\n"
    req = parse_request(data)
    assert req is not None
    assert req.host == "first.example"
    assert req.header_end == len(data)
    assert set(req.anomalies) == {"http.multiple_host", "http.bad_header_line", "http.obs_fold"}


# --- not HTTP, too long --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x16",  # a TLS record fails on its first byte
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"get / HTTP/1.1\r\n\r\n",
        b" GET / HTTP/1.1\r\n\r\n",
        b"GETTTTTTTTTTTTTTTTTTTTTTTTTTT",
        b"GET /\x00binary",
        b"GET / HTTP/1.1\x01",
        b"GET /\r\n\r\n",  # no version: HTTP/0.9 is not read
        b"GET / SIP/2.0\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_not_http(data: bytes) -> None:
    with pytest.raises(MalformedPacket) as exc:
        parse_request(data)
    assert exc.value.kind == "http.not_http"


def test_random_binary_fails_fast() -> None:
    # Random-looking bytes are rejected from their first bytes, without waiting for 16 KiB.
    blob = bytes((i * 73 + 41) % 256 for i in range(64))
    with pytest.raises(MalformedPacket) as exc:
        parse_request(blob[:8])
    assert exc.value.kind == "http.not_http"


def test_header_too_long() -> None:
    head = b"GET / HTTP/1.1\r\nX-Pad: "
    pad = b"a" * (MAX_HEADER - len(head) - 1)
    assert parse_request(head + pad) is None
    with pytest.raises(MalformedPacket) as exc:
        parse_request(head + pad + b"a")
    assert exc.value.kind == "http.header_too_long"
    with pytest.raises(MalformedPacket) as exc:
        parse_request(b"GET /" + b"a" * MAX_HEADER)
    assert exc.value.kind == "http.header_too_long"
    # A header block that ends only after the limit is too long, however it is chunked.
    with pytest.raises(MalformedPacket):
        parse_request(head + pad + b"aa\r\n\r\n")


# --- fed in pieces -------------------------------------------------------------------------

PIECE_CASES = [
    SIMPLE,
    f"POST /{pct(FALUN_GB18030)} HTTP/1.1\r\nHost: x.cn\r\nContent-Length: 3\r\n\r\n".encode(),
    b"GET / HTTP/1.0\n\n",
]


@pytest.mark.parametrize("data", PIECE_CASES)
def test_pieces(data: bytes) -> None:
    whole = parse_request(data)
    assert whole is not None
    assert whole.header_end == len(data)
    for n in range(len(data)):
        assert parse_request(data[:n]) is None, n
    # A body, a second pipelined request or junk after the headers changes nothing.
    assert parse_request(data + b"abc") == whole
    assert parse_request(data + b"GET /falun HTTP/1.1\r\nHost: b\r\n\r\n") == whole
    assert parse_request(data + bytes(range(256))) == whole


def test_header_split_across_calls() -> None:
    buffer = b""
    results = []
    for chunk in (b"GET /fa", b"lun HTTP/1.1\r\nHo", b"st: example.com\r", b"\n", b"\r\n"):
        buffer += chunk
        results.append(parse_request(buffer))
    assert results[:-1] == [None] * 4
    final = results[-1]
    assert final is not None
    assert (final.path, final.host) == ("/falun", "example.com")


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        req = parse_request(data)
    except MalformedPacket:
        return
    if req is not None:
        assert 0 < req.header_end <= len(data)


@settings(max_examples=500)
@given(
    st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS"]),
    st.binary(max_size=60),
    st.binary(max_size=60),
    st.binary(max_size=60),
)
def test_arbitrary_request_shaped(method: str, target: bytes, host: bytes, tail: bytes) -> None:
    data = method.encode() + b" /" + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n" + tail
    try:
        req = parse_request(data)
    except MalformedPacket as exc:
        assert exc.kind == "http.not_http"
        return
    if req is not None:
        assert req.method == method
        assert req.path in req.texts


# --- the same reading as a plain one --------------------------------------------------------

_R_METHOD = re.compile(rb"[A-Z_\-]{1,20} ")
_R_BAD_METHOD = re.compile(rb"[^A-Z_\-]")
_R_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_R_REQUEST_LINE = re.compile(rb"([A-Z_\-]+) (.*) (HTTP/\d\.\d)")
_R_BLANK = re.compile(rb"\n\r?\n")
_R_PORT = re.compile(rb"([^:]*):\d*")


def _plain_reading(data: bytes) -> tuple[object, ...] | None:
    """The request as the module docstring describes it, read with regular expressions, with
    the same errors (kind and offset): ``parse_request`` is written for speed and must read
    every input the same way."""
    if not _R_METHOD.match(data):
        head = data[:21]
        if head[:1] == b" ":
            raise MalformedPacket("http.not_http", 0, "")
        bad = _R_BAD_METHOD.search(head.split(b" ")[0])
        if bad:
            raise MalformedPacket("http.not_http", bad.start(), "")
        if len(data) > 20:
            raise MalformedPacket("http.not_http", 20, "")
        return None
    end = data.find(b"\n", 0, MAX_HEADER)
    line = data[: end if end >= 0 else MAX_HEADER]
    line = line[:-1] if line.endswith(b"\r") else line
    bad = _R_CONTROL.search(line)
    if bad:
        raise MalformedPacket("http.not_http", bad.start(), "")
    if end < 0:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "")
        return None
    request = _R_REQUEST_LINE.fullmatch(line)
    if request is None or not request[2].strip(b" "):
        raise MalformedPacket("http.not_http", 0, "")
    blank = _R_BLANK.search(data, end, MAX_HEADER)
    if blank is None:
        if len(data) >= MAX_HEADER:
            raise MalformedPacket("http.header_too_long", MAX_HEADER, "")
        return None
    host, anomalies = None, []
    for header in data[end + 1 : blank.start()].split(b"\n") if blank.start() > end else []:
        name, colon, value = header.partition(b":")
        kind = (
            "http.obs_fold"
            if header[:1] in (b" ", b"\t")
            else "http.bad_header_line"
            if not colon or not name.strip(b" \t") or name != name.strip(b" \t")
            else "http.multiple_host"
            if name.lower() == b"host" and host is not None
            else None
        )
        if kind is None and name.lower() == b"host":
            host = value.removesuffix(b"\r").strip(b" \t")
        if kind is not None and kind not in anomalies:
            anomalies.append(kind)
    target = request[2].strip(b" ")
    path = _readings(unquote_to_bytes(target))
    texts = list(path)
    if host is not None:
        if host.startswith(b"["):
            host = host[1 : host.find(b"]")] if host.find(b"]") > 0 else host
        elif port := _R_PORT.fullmatch(host):
            host = port[1]
        texts += [text.lower() for text in _readings(unquote_to_bytes(host))]
    host_text = None if host is None else _readings(unquote_to_bytes(host))[0].lower()
    return (
        request[1].decode(),
        target.decode("latin-1"),
        path[0],
        host_text,
        tuple(dict.fromkeys(texts)),
        blank.end(),
        tuple(anomalies),
    )


def _readings(raw: bytes) -> list[str]:
    out = []
    for codec in ("utf-8", "gb18030"):
        with contextlib.suppress(UnicodeDecodeError):
            out.append(raw.decode(codec))
    return out or [raw.decode("latin-1")]


_PIECES = st.sampled_from(
    [b"GET", b"POST", b"G-T_", b"A" * 20, b"A" * 21, b"get", b" ", b"  ", b"\r", b"\n", b"\t",
     b":", b"Host", b"hOsT", b"host:", b"HTTP/1.1", b"HTTP/1.", b"HTTP/a.1", b"%41", b"%", b"[",
     b"]", b":80", b"\x00", b"\x7f", b"\x80", b"\xe6\xb3\x95", b"x", b"/"]
)  # fmt: skip


_FEW = st.lists(_PIECES, max_size=6).map(b"".join)
_HEADERS = st.lists(st.tuples(_FEW, _FEW), max_size=4).map(
    lambda hs: b"".join(name + b":" + value + b"\r\n" for name, value in hs)
)
_REQUESTS = st.builds(
    lambda method, target, host, headers, end: (
        method + b" /" + target + b" HTTP/1.1\r\nHost:" + host + b"\r\n" + headers + end
    ),
    st.sampled_from([b"GET", b"POST", b"G-T_"]),
    _FEW,
    _FEW,
    _HEADERS,
    st.sampled_from([b"\r\n", b"\n", b"", b"\r\n\r\nbody"]),
)


@settings(max_examples=3000)
@given(st.one_of(st.lists(_PIECES, max_size=30).map(b"".join), st.binary(max_size=200), _REQUESTS))
def test_the_same_reading_as_a_plain_one(data: bytes) -> None:
    try:
        expected: object = _plain_reading(data)
    except MalformedPacket as exc:
        expected = (exc.kind, exc.offset)
    try:
        req = parse_request(data)
        got: object = None
        if req is not None:
            got = (req.method, req.target, req.path, req.host, req.texts, req.header_end)
            got = (*got, req.anomalies)
    except MalformedPacket as exc:
        got = (exc.kind, exc.offset)
    assert got == expected


def _outcome(read: Callable[[bytes], object], data: bytes) -> object:
    try:
        req = read(data)
    except MalformedPacket as exc:
        return (exc.kind, exc.offset)
    if isinstance(req, HttpRequest):
        fields = (req.method, req.target, req.path, req.host, req.texts, req.header_end)
        return (*fields, req.anomalies)
    return req


@pytest.mark.parametrize("shift", range(-4, 3))
@pytest.mark.parametrize(
    "end", [b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n", b"\r\n", b"\r\nHost: b\r\n\r\n"]
)
def test_the_same_reading_at_the_limit(shift: int, end: bytes) -> None:
    # The blank line, the request line's end and a line's CR around MAX_HEADER: the loops stop
    # where the plain reading's bounded searches stop.
    head = b"GET /x HTTP/1.1\r\nHost: a:80\r\nX-Pad: "
    pad = b"p" * (MAX_HEADER - len(head) - len(end) + shift)
    data = head + pad + end
    assert _outcome(parse_request, data) == _outcome(_plain_reading, data)
    line = b"GET /" + b"q" * (MAX_HEADER - 5 - len(end) + shift) + end
    assert _outcome(parse_request, line) == _outcome(_plain_reading, line)
