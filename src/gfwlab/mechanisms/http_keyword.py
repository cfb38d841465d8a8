"""HTTP Host and keyword filtering: forged resets when a request names a blocked host or word.

Sources: spec §3; R. Rambert, Z. Weinberg, D. Barradas, N. Christin, *Chinese Wall or Swiss
Cheese? Keyword filtering in the Great Firewall of China*, WWW 2021 (fields, lists, ports,
trigger rate, residual); R. Clayton, S. J. Murdoch, R. N. M. Watson, *Ignoring the Great
Firewall of China*, PET 2006 (reset pattern); INTANG FAQ (90 s penalty); GFWeb, USENIX Security
2024 (list scale).

Measured, and emulated here:

- only the request-line path and the Host header are inspected, after percent-decoding, in UTF-8
  and GB18030 (cookies, other headers and bodies are not); on every TCP port;
- ``domains`` are matched against the Host (bare domains include subdomains); ``keywords``
  anywhere in the path or Host; ``search_keywords`` only when the request also contains the
  word ``search`` (Rambert: requests with "search" are checked against a longer list);
- about 75% of matching requests are reset (``probability``);
- resets go to both ends; which injector the HTTP filter uses is unknown (spec §12.6), so
  ``injector`` defaults to Clayton 2006's three-each-way pattern and may be any S&P'25 type;
- residual ("penalty box"): 90 s on (client IP, server IP, server port), during which 50-75% of
  new connections are blocked even without a keyword (``residual_probability``, default 0.625,
  the middle of that range).

Differences: a residual hit is reset on its SYN; only the first request of a connection is
inspected (whether later keep-alive requests are is not published).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from gfwlab.engine.actions import EventFields, rounded
from gfwlab.engine.mechanism import Decision, Mechanism, Residual, Seen
from gfwlab.mechanisms import register_mechanism
from gfwlab.mechanisms._forge import (
    Injector,
    PinnedInjectors,
    ResetParams,
    ResidualResetFields,
    forge_resets,
)
from gfwlab.proto.http import HttpRequest
from gfwlab.rules import DomainSet, KeywordSet, ResidualKey


@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, kw_only=True)
class HttpKeywordParams(ResetParams):
    domains: DomainSet = DomainSet()
    """Host rules (bare domains include subdomains)."""
    keywords: KeywordSet = KeywordSet()
    """Words blocked anywhere in the decoded path or Host."""
    search_keywords: KeywordSet = KeywordSet()
    """Words blocked only in requests that also contain "search" (Rambert et al.)."""
    probability: float = 0.75
    """Share of matching requests that are reset (~75%, spec §3)."""
    injector: Injector = "clayton2006"
    """Reset fingerprint: clayton2006, type1, type2, type3 or mixed (delays: the SNI
    measurements; HTTP's were not published separately)."""
    residual_s: float = 90.0
    """Penalty box length (spec §3; INTANG FAQ)."""
    residual_key: ResidualKey = "3-tuple"
    """(client IP, server IP, server port): other ports and server IPs are unaffected."""
    residual_probability: float = 0.625
    """Share of new connections blocked during the penalty box (50-75% measured)."""

    def __post_init__(self) -> None:
        ResetParams.__post_init__(self)
        for name in ("probability", "residual_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")


@dataclass(frozen=True, kw_only=True, init=False)
class HttpSparedFields(EventFields):
    """A matching request that the probability draw let through."""

    host: str | None
    """The Host header, as the censor read it (None: none)."""
    draw: float
    """The draw; a request is reset when it is below ``probability``."""
    probability: float
    """The chance that a matching request is reset (spec §3)."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, host: str | None, draw: float, probability: float) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "draw", draw)
        object.__setattr__(self, "probability", probability)


@dataclass(frozen=True, kw_only=True, init=False)
class HttpResetFields(EventFields):
    """A request reset for a keyword or host."""

    host: str | None
    """The Host header, as the censor read it (None: none)."""
    path: str
    """The request target (its first 200 characters)."""
    injector: str
    """Which RST injector's fingerprint the forged packets carry."""

    # Written out: a dataclass's generated __init__ runs interpreted even where the class is
    # compiled (gfwlab._build); this one is compiled with it.
    def __init__(self, *, host: str | None, path: str, injector: str) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "injector", injector)


class HttpKeyword(Mechanism[HttpKeywordParams]):
    citation = (
        "spec §3; Rambert et al., Chinese Wall or Swiss Cheese? Keyword filtering in the Great "
        "Firewall of China, WWW 2021; "
        "Clayton et al., Ignoring the Great Firewall of China, PET 2006"
    )
    params_cls = HttpKeywordParams

    def setup(self) -> None:
        self._pins = PinnedInjectors(self.params)

    def match(self, request: HttpRequest) -> str | None:
        p = self.params
        if request.host:
            rule = p.domains.match(request.host)
            if rule is not None:
                return rule
        for text in request.texts:
            word = p.keywords.match(text)
            if word is not None:
                return word
        if len(p.search_keywords) and any("search" in t.lower() for t in request.texts):
            for text in request.texts:
                word = p.search_keywords.match(text)
                if word is not None:
                    return f"search+{word}"
        return None

    def on_http_request(self, seen: Seen, request: HttpRequest) -> Decision | None:
        rule = self.match(request)
        if rule is None:
            return None
        p = self.params
        draw = self.rng(seen).random()
        if draw >= p.probability:
            return Decision(
                action="pass",
                rule=rule,
                fields=HttpSparedFields(
                    host=request.host, draw=rounded(draw, 6), probability=p.probability
                ),
            )
        return self._reset(seen, rule, request)

    def residual_hit(self, seen: Seen, rule: str) -> Decision | None:
        return self._reset(seen, rule, None)

    def _reset(self, seen: Seen, rule: str, request: HttpRequest | None) -> Decision:
        p = self.params
        host = request.host if request is not None else None
        kind, forged = forge_resets(
            seen.pkt,
            c2s=seen.c2s,
            params=p,
            rng=self.rng(seen),
            pinned=lambda: self._pins.pin(host or rule, self.keyed_rng),
        )
        return Decision(
            action="rst",
            rule=rule,
            injections=forged,
            residual=Residual(
                key=p.residual_key,
                seconds=p.residual_s,
                policy="rst",
                probability=p.residual_probability,
            ),
            fields=HttpResetFields(host=request.host, path=request.path[:200], injector=kind)
            if request is not None
            else ResidualResetFields(injector=kind),
        )


register_mechanism("http_keyword", HttpKeyword)
