"""Geneva's strategy language, parsed (written for gfwlab from Geneva's published grammar).

A strategy is an outbound forest and an optional inbound forest, separated by ``\\/``::

    [TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{TCP:chksum:corrupt},),)-| \\/

Each tree is ``[PROTO:field:value(:gas)]-ACTION-|``: a trigger, then an action tree. An action is
``name``, ``name{params}``, and optionally ``(left,right)`` subtrees: ``duplicate`` and
``fragment`` send their first packet down ``left`` and their second down ``right``; ``tamper``
sends its one packet down ``left``. ``drop`` and ``send`` are leaves; an empty subtree sends.
The parameters are ``tamper{PROTO:field:replace:value}``, ``tamper{PROTO:field:corrupt}`` and
``fragment{tcp|ip:size:True|False(:overlap)}``. gfwlab adds ``fragment{tls:size:True|False}``
(not in Geneva): the TLS record at the start of a TCP payload re-framed as two records after
``size`` bytes of its body, each in its own segment (spec §4a: the GFW does not reassemble TLS
records; :mod:`gfwlab.evade.interp`). A strategy pasted from Geneva's documentation is
accepted as written (a trailing ``-|`` or not, ``\\/`` or ``/``, any spacing between trees).

Errors are :class:`StrategyError`: one line naming the position (1-based column) and what was
expected there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gfwlab.errors import GfwlabError

PROTOS = ("IP", "IPv6", "TCP", "UDP", "DNS", "DNSQR")
FIELDS: dict[str, tuple[str, ...]] = {
    "IP": ("version", "ihl", "tos", "len", "id", "flags", "frag", "ttl", "proto", "chksum",
           "src", "dst", "load"),
    "IPv6": ("tc", "fl", "plen", "nh", "hlim", "src", "dst"),
    "TCP": ("sport", "dport", "seq", "ack", "dataofs", "reserved", "flags", "window", "chksum",
            "urgptr", "load", "options-eol", "options-nop", "options-mss", "options-wscale",
            "options-sackok", "options-sack", "options-timestamp", "options-altchksum",
            "options-altchksumopt", "options-md5header", "options-uto"),
    "UDP": ("sport", "dport", "len", "chksum", "load"),
    "DNS": ("id", "qr", "opcode", "aa", "tc", "rd", "ra", "z", "ad", "cd", "rcode", "qdcount",
            "ancount", "nscount", "arcount"),
    "DNSQR": ("qname", "qtype", "qclass"),
}  # fmt: skip
ACTIONS = ("duplicate", "fragment", "tamper", "drop", "send", "sleep")


class StrategyError(GfwlabError):
    """A strategy string that is not Geneva's language; ``str()`` is the one-line message."""

    def __init__(self, pos: int, expected: str, text: str) -> None:
        got = repr(text[pos : pos + 12]) if pos < len(text) else "the end"
        super().__init__(f"strategy, column {pos + 1}: expected {expected}, got {got}")
        self.pos = pos


@dataclass(frozen=True, slots=True)
class Trigger:
    proto: str
    field: str
    value: str
    gas: int | None = None
    """How many times it fires (None: always)."""

    def __str__(self) -> str:
        gas = f":{self.gas}" if self.gas is not None else ""
        return f"[{self.proto}:{self.field}:{self.value}{gas}]"


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    params: tuple[str, ...] = ()
    left: Action | None = None
    right: Action | None = None

    def __str__(self) -> str:
        s = self.name + ("{" + ":".join(self.params) + "}" if self.params else "")
        if self.left is not None or self.right is not None:
            left = str(self.left) if self.left else ""
            right = str(self.right) if self.right else ""
            s += f"({left},{right})" if self.name in ("duplicate", "fragment") else f"({left},)"
        return s


@dataclass(frozen=True, slots=True)
class Tree:
    trigger: Trigger
    action: Action

    def __str__(self) -> str:
        return f"{self.trigger}-{self.action}-|"


@dataclass(frozen=True, slots=True)
class Strategy:
    outbound: tuple[Tree, ...] = ()
    inbound: tuple[Tree, ...] = ()
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return " ".join(map(str, self.outbound)) + " \\/ " + " ".join(map(str, self.inbound))

    @property
    def splits_tls(self) -> bool:
        """Whether it re-frames TLS records (its endpoint's received ACKs then need fixing)."""

        def walk(a: Action | None) -> bool:
            if a is None:
                return False
            here = a.name == "fragment" and a.params[0].lower() == "tls"
            return here or walk(a.left) or walk(a.right)

        return any(walk(t.action) for t in self.outbound)


def parse_strategy(text: str) -> Strategy:
    """Parse one strategy; raise :class:`StrategyError` naming the column and what was expected."""
    p = _Parser(text)
    out = p.forest(stop_at_split=True)
    inbound: list[Tree] = []
    if p.split():
        inbound = p.forest(stop_at_split=False)
    p.ws()
    if p.i != len(text):
        p.fail("a tree starting with '[' or the end of the strategy")
    if not out and not inbound and text.strip() not in ("\\/", "/", ""):
        p.fail("a tree")
    return Strategy(tuple(out), tuple(inbound), text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, expected: str) -> None:
        raise StrategyError(self.i, expected, self.s)

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\n":
            self.i += 1

    def peek(self, lit: str) -> bool:
        return self.s.startswith(lit, self.i)

    def eat(self, lit: str, expected: str | None = None) -> None:
        if not self.peek(lit):
            self.fail(expected or repr(lit))
        self.i += len(lit)

    def split(self) -> bool:
        self.ws()
        for lit in ("\\/", "/"):
            if self.peek(lit):
                self.i += len(lit)
                return True
        return False

    def forest(self, *, stop_at_split: bool) -> list[Tree]:
        trees: list[Tree] = []
        while True:
            self.ws()
            if not self.peek("["):
                return trees
            trees.append(self.tree())
            if stop_at_split and (self.peek("\\/") or self.peek("/")):
                return trees

    def tree(self) -> Tree:
        trig = self.trigger()
        self.eat("-", "'-' after the trigger")
        action = self.action()
        if action is None:
            self.fail("an action (" + ", ".join(ACTIONS) + ")")
        if self.peek("-|"):
            self.i += 2
        elif self.peek("-"):
            self.i += 1
        return Tree(trig, action)  # type: ignore[arg-type]

    def word(self, stops: str) -> tuple[int, str]:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in stops:
            self.i += 1
        return start, self.s[start : self.i]

    def trigger(self) -> Trigger:
        self.eat("[")
        start, body = self.word("]")
        self.eat("]", "']' closing the trigger")
        parts = body.split(":")
        if len(parts) not in (3, 4):
            self.i = start
            self.fail("a trigger PROTO:field:value or PROTO:field:value:gas")
        proto, fname, value = parts[:3]
        self._check_field(start, proto, fname)
        gas = None
        if len(parts) == 4:
            if not parts[3].lstrip("-").isdigit():
                self.i = start + len(":".join(parts[:3])) + 1
                self.fail("a whole number of times the trigger fires (gas)")
            gas = int(parts[3])
        return Trigger(proto, fname, value, gas)

    def _check_field(self, start: int, proto: str, fname: str) -> None:
        if proto not in PROTOS:
            self.i = start
            self.fail("a protocol (" + ", ".join(PROTOS) + ")")
        if fname not in FIELDS[proto]:
            self.i = start + len(proto) + 1
            self.fail(f"a {proto} field (" + ", ".join(FIELDS[proto]) + ")")

    def action(self) -> Action | None:
        start, name = self.word("{(,)-| \\/")
        if not name:
            return None
        if name not in ACTIONS:
            self.i = start
            self.fail("an action (" + ", ".join(ACTIONS) + ")")
        params: tuple[str, ...] = ()
        if self.peek("{"):
            self.i += 1
            pstart, body = self.word("}")
            self.eat("}", "'}' closing the parameters")
            params = tuple(body.split(":"))
            self._check_params(pstart, name, params)
        elif name in ("tamper", "fragment"):
            self.fail("'{' and the parameters of " + name)
        left = right = None
        if self.peek("("):
            self.i += 1
            left = self.action()
            if self.peek(","):
                self.i += 1
                second = self.i
                right = self.action()
                if right is not None and name not in ("duplicate", "fragment"):
                    self.i = second
                    self.fail(f"')': {name} has one packet, so no second subtree")
            self.eat(")", "',' or ')' closing the subtrees")
        return Action(name, params, left, right)

    def _check_params(self, start: int, name: str, params: tuple[str, ...]) -> None:
        def at(k: int, expected: str) -> None:
            self.i = start + sum(len(x) + 1 for x in params[:k])
            self.fail(expected)

        if name == "tamper":
            if len(params) < 3:
                at(len(params), "tamper{PROTO:field:replace:value} or tamper{PROTO:field:corrupt}")
            self._check_field(start, params[0], params[1])
            if params[2] == "replace" and len(params) == 4:
                return
            if params[2] == "corrupt" and len(params) == 3:
                return
            at(2, "'replace:value' or 'corrupt'")
        elif name == "fragment":
            if len(params) not in (3, 4) or params[0].lower() not in ("tcp", "ip", "tls"):
                at(0, "fragment{tcp|ip|tls:size:True|False} or with ':overlap'")
            if params[0].lower() == "tls" and len(params) == 4:
                at(3, "no overlap for fragment{tls:...}")
            if not params[1].lstrip("-").isdigit():
                at(1, "a whole number (where to cut; -1 cuts in half)")
            if params[2] not in ("True", "False"):
                at(2, "True (in order) or False (out of order)")
            if len(params) == 4 and not params[3].isdigit():
                at(3, "a whole number of overlapping bytes")
        elif name == "sleep":
            try:
                float(params[0])
            except ValueError:
                at(0, "a number of seconds")
        else:
            at(0, f"no parameters: {name} takes none")
