"""Verdicts from what the probe observed: OONI Web Connectivity's, then gfwlab's attribution.

Nothing here reads the censor's events: the input is the probe's own observations and the
control's (:class:`Observation`). Grading against the events happens afterwards, elsewhere
(:mod:`gfwlab.measure.grade`).

OONI Web Connectivity (ooni/spec ``ts-017-web-connectivity``): ``blocking`` is

- ``null`` when the control failed (then ``accessible`` is null too): an unreachable control
  is a control failure, never censorship;
- ``"dns"`` when the probe's DNS answer is inconsistent with the control's (here also when the
  replies show injection: several different replies, a known forged address);
- ``"tcp_ip"`` when the TCP connection failed where the control's succeeded;
- ``"http-failure"`` when the TLS handshake or the HTTP exchange failed where the control's
  succeeded;
- ``"http-diff"`` when the response differs from the control's (status, body length proportion
  below 0.7, or title);
- ``false`` otherwise (``accessible`` true; or false when the control also failed to fetch, a
  site that is down, not blocked).

gfwlab's attribution (``x_gfwlab``), from the same observations and the spec:

=================  ==========================================================================
``dns_injection``  several replies to one query, a known forged pool, or an answer unlike the
                   control's (spec §2)
``tls_sni``        the TLS handshake reset after the ClientHello (spec §4a)
``http_keyword``   the HTTP exchange reset after the request (spec §3)
``residual``       the SYN of the first connection reset with a GFW injector's fingerprint: a
                   residual block from an earlier trigger (spec §3, §4a)
``ip_port_rst``    the SYN reset with another fingerprint (spec §8, §14a)
``null_route``     the connection timed out and the SYN reached the server: server-to-client
                   packets dropped (spec §8)
``fet``            the connection timed out and the SYN never reached the server: new
                   connections to the server port dropped, the FET residual (spec §6)
``drop``           the TLS or HTTP step timed out after the connection was made
``quic_sni``       TCP fine, HTTP/3 timed out where the control's HTTP/3 worked (spec §5)
=================  ==========================================================================

``injector`` is the RST fingerprint's type (:func:`gfwlab.measure.sniff.classify`) or the DNS
injector labels; ``residual`` is true when a second connection to the same server port with a
harmless SNI or Host was blocked too (or the first was blocked at its SYN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gfwlab.measure.dnscheck import DnsAnalysis, DnsResult
from gfwlab.measure.web import H3Result, WebResult

BODY_PROPORTION = 0.7
"""OONI's threshold: bodies whose shorter/longer length ratio is below this differ."""
GFW_INJECTORS = ("type1", "type2", "type3", "clayton2006", "henan")


@dataclass(slots=True)
class Observation:
    """Everything measured for one URL, by the probe and by the control."""

    dns: DnsResult
    control_dns: DnsResult | None
    dns_analysis: DnsAnalysis
    web: WebResult | None
    control_web: WebResult | None
    resets: list[Any] = field(default_factory=list)
    """RstPacket: resets received on the probe's connection."""
    injector: str | None = None
    syn_arrived: bool | None = None
    """For a TCP timeout: whether the server saw the SYN (None: not checked)."""
    residual_check: WebResult | None = None
    residual_resets: list[Any] = field(default_factory=list)
    h3: H3Result | None = None
    control_h3: H3Result | None = None
    skipped: str | None = None
    """Why the probe did not connect (e.g. a forged address outside the lab)."""


@dataclass(slots=True)
class Verdict:
    blocking: str | bool | None
    accessible: bool | None
    mechanism: str | None = None
    injector: str | None = None
    residual: bool = False
    control_failure: str | None = None
    h3_blocked: bool = False
    reasons: list[str] = field(default_factory=list)


def _body_diff(a: WebResult, b: WebResult) -> str | None:
    ra, rb = a.response, b.response
    if ra is None or rb is None:
        return None
    if ra.status != rb.status:
        return f"status {ra.status} vs the control's {rb.status}"
    la, lb = ra.body_length, rb.body_length
    if max(la, lb) > 0 and min(la, lb) / max(la, lb) < BODY_PROPORTION:
        return f"body length {la} vs the control's {lb}"
    if ra.title != rb.title:
        return f"title {ra.title!r} vs the control's {rb.title!r}"
    return None


def _blocked_again(check: WebResult | None) -> bool:
    return check is not None and check.failed_step is not None


def decide(obs: Observation) -> Verdict:
    """The verdict of one measurement (see the module docstring)."""
    cdns, cweb = obs.control_dns, obs.control_web
    if cdns is None or cdns.failure is not None:
        why = cdns.failure if cdns is not None else "no control"
        return Verdict(
            None,
            None,
            control_failure=f"dns: {why}",
            reasons=["the control resolver did not answer: no verdict"],
        )
    if cweb is None or cweb.failed_step is not None:
        why = cweb.failure if cweb is not None else "no control"
        # The control could not fetch it either: the site is down, or the control is cut off.
        if obs.web is not None and obs.web.failed_step is None:
            return Verdict(False, True, control_failure=f"http: {why}")
        return Verdict(
            None,
            None,
            control_failure=f"http: {why}",
            reasons=["the control could not fetch the site: no verdict"],
        )
    a = obs.dns_analysis
    if a.injected or a.consistent is False:
        return Verdict(
            "dns",
            False,
            mechanism="dns_injection",
            injector="; ".join(a.injectors) or None,
            reasons=list(a.reasons),
        )
    web = obs.web
    if web is None:
        return Verdict(None, None, control_failure=None, reasons=[obs.skipped or "not fetched"])
    step = web.failed_step
    injector = obs.injector
    if step == "tcp":
        v = Verdict("tcp_ip", False, injector=injector)
        if web.tcp.failure in ("connection_reset", "connection_refused"):
            gfw = injector in GFW_INJECTORS
            v.mechanism, v.residual = ("residual", True) if gfw else ("ip_port_rst", False)
            v.reasons.append(f"SYN answered by a reset ({injector or 'no reset captured'})")
        elif web.tcp.failure == "generic_timeout_error":
            if obs.syn_arrived:
                v.mechanism = "null_route"
                v.reasons.append("SYN reached the server, its SYN/ACK never came back")
            elif obs.syn_arrived is False:
                v.mechanism, v.residual = "fet", True
                v.reasons.append("SYN never reached the server: the server port is black-holed")
        return v
    if step in ("tls", "http"):
        failure = (
            web.tls.failure
            if step == "tls" and web.tls
            else (web.http.failure if web.http else None)
        )
        v = Verdict("http-failure", False, injector=injector)
        if failure == "connection_reset" or obs.resets:
            v.mechanism = "tls_sni" if step == "tls" else "http_keyword"
        elif failure == "generic_timeout_error":
            v.mechanism = "drop"
        v.residual = _blocked_again(obs.residual_check)
        v.reasons.append(f"{step} failed: {failure}")
        return v
    diff = _body_diff(web, cweb)
    if diff is not None:
        return Verdict("http-diff", False, reasons=[diff])
    v = Verdict(False, True)
    h3, ch3 = obs.h3, obs.control_h3
    if h3 is not None and ch3 is not None and ch3.failure is None and h3.failure is not None:
        v.h3_blocked, v.mechanism = True, "quic_sni"
        v.reasons.append(f"HTTP/3 failed ({h3.failure}) where the control's worked")
    return v


def naive(obs: Observation) -> Verdict:
    """A deliberately naive probe (for testing graders): every failure is ``tcp_ip``.

    It ignores the control and the DNS replies' content, so it misnames DNS injection, TLS and
    HTTP resets; the grader must score it lower on exactly those sites.
    """
    web = obs.web
    failed = (
        obs.dns.failure is not None
        or obs.dns_analysis.injected
        or (obs.dns_analysis.consistent is False)
        or web is None
        or web.failed_step is not None
    )
    return Verdict("tcp_ip", False) if failed else Verdict(False, True)
