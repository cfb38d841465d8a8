"""gfwlab.tools without the lab: cells judged from events, dates, trial addresses, commands of
your own tool, and the command line's answers to bad input (exit 2, nothing written)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gfwlab.evade.simulate import wilson
from gfwlab.lab import ca
from gfwlab.live.topology import SITES_V4
from gfwlab.tools.matrix import BUILTIN, Cell, judge, parse_when
from gfwlab.tools.recipe import (
    ORIGIN,
    TOOL_RANGE,
    VIRTUAL,
    WEB_NAME,
    Attempt,
    RecipeError,
    _https_get,
    _socks_connect,
    attempt,
)
from gfwlab.tools.recipes import RECIPES, fill, split_command
from gfwlab.tools.run import CAPACITY, DOWNLOAD_TRIES, Plan, addresses
from testenv import gfwlab

FLOW = {"proto": "tcp", "src": "198.18.0.2", "sport": 40000, "dst": "198.19.240.1", "dport": 8388}


def event(mechanism: str, action: str, rule: str = "r", **extra: object) -> dict[str, object]:
    return {"ts": 1.0, "flow": FLOW, "mechanism": mechanism, "action": action, "rule": rule,
            "citation": f"spec ({mechanism})", **extra}  # fmt: skip


def cell(trials: int, successes: int, *events: dict[str, object]) -> Cell:
    return judge(Cell("t", "2022-06-01", trials, successes, events=list(events)), "fallback")


def test_a_cell_that_no_mechanism_touched_says_so() -> None:
    c = cell(10, 10)
    assert c.outcome == "no-published-mechanism"
    assert c.label() == "passes here: no published mechanism"
    assert c.citation == "fallback" and c.mechanisms == [] and c.first_packet is None


def test_an_exemption_or_probes_make_works_not_silence() -> None:
    c = cell(
        10, 10, event("fet", "pass", "fet:exempt:ex1", exempt=["ex1-popcount", "ex5-protocol"])
    )
    assert c.outcome == "works" and c.mechanisms == ["fet"]
    assert "exempt: ex1+ex5" in c.explanation
    assert cell(5, 5, event("ss_probing", "probe")).outcome == "works"


def test_failures_with_drops_are_degraded_or_blocked_with_the_first_packet() -> None:
    drop = event("fet", "drop", "fet:no-exemption", length=120, popcount=4.0)
    c = cell(10, 7, event("fet", "pass"), drop)
    assert c.outcome == "degraded"
    assert c.first_packet is not None and c.first_packet["length"] == 120
    assert "citation" not in c.first_packet and c.citation == "spec (fet)"
    assert cell(10, 0, drop).outcome == "blocked"


def test_only_a_hypothesis_blocking_is_said_so() -> None:
    tit = event("tls_in_tls", "drop", evidence="hypothesis")
    assert cell(10, 4, tit).outcome == "hypothesis-only"
    assert cell(10, 4, tit, event("fet", "drop")).outcome == "degraded"


TIMED_OUT = "TLS handshake: TimeoutError: timed out"


def failed(address: str, error: str = TIMED_OUT) -> dict[str, object]:
    return {"address": address, "error": error, "seconds": 2.0}


def test_failures_without_events_are_blamed_on_the_tool_with_their_errors() -> None:
    c = Cell("t", "2022-06-01", 10, 8, failures=[failed("198.19.240.1"), failed("198.19.240.2")])
    judge(c, "fallback")
    assert c.outcome == "degraded" and c.label() == "degraded (2/10 failed, 0 by the censor)"
    assert c.explanation == (
        "2 failed trials without a censor event on their address (no censorship decision: the "
        "tool or the lab): TLS handshake: TimeoutError: timed out ×2"
    )
    assert c.row()["failures"][0] == failed("198.19.240.1")


def test_each_failed_trial_is_matched_to_a_censor_event_on_its_own_address() -> None:
    def on(address: str, action: str) -> dict[str, object]:
        return event("fet", action) | {"flow": FLOW | {"dst": address}}

    events = [on("198.19.240.1", "drop"), on("198.19.240.2", "pass"), on("198.19.240.3", "pass")]
    c = Cell("t", "2022-06-01", 3, 1, events=events,
             failures=[failed("198.19.240.1"), failed("198.19.240.2")])  # fmt: skip
    judge(c, "fallback")
    assert c.outcome == "degraded" and c.label() == "degraded (2/3 failed, 1 by the censor)"
    assert "1 failed trials without a censor event on their address" in c.explanation
    c = Cell("t", "2022-06-01", 3, 2, events=events, failures=[failed("198.19.240.1")])
    assert "without a censor event" not in judge(c, "fallback").explanation
    # Trials that wait out residual blocks share one address: only a cell without any blocking
    # event is blamed on the tool.
    c = Cell("t", "2022-06-01", 3, 1, events=events, trial_mode="waited",
             failures=[failed("198.19.240.1")] * 2)  # fmt: skip
    assert "without a censor event" not in judge(c, "fallback").explanation


def test_row_keys_and_interval() -> None:
    row = cell(50, 37, event("fet", "drop")).row()
    assert list(row) == ["tool", "date", "trials", "successes", "outcome", "rate", "ci",
                         "mechanisms", "first_packet", "citation", "trial_mode",
                         "failures"]  # fmt: skip
    lo, hi = wilson(37, 50, 0.99)
    assert row["ci"] == [round(lo, 6), round(hi, 6)] and row["rate"] == 0.74
    assert row["trial_mode"] == "fresh-address"
    json.dumps(row)


def test_builtin_dates_cover_the_eras() -> None:
    labels = [w.label for w in BUILTIN]
    assert labels[:4] == ["2020-06-01", "2022-06-01", "2023-06-01", "2024-06-01"]
    event_443 = BUILTIN[4]
    # spec §14a: 2025-08-19 16:34-17:48 UTC
    assert event_443.at is not None and "16:34" <= event_443.at[11:] <= "17:48"
    assert parse_when("2021-12-01").at is None
    assert parse_when("2025-08-19T17:00").date == "2025-08-19"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when("2022-13-01")


def test_trial_addresses_are_the_tool_range_once_each() -> None:
    got = list(addresses())
    assert len(got) == len(set(got)) == CAPACITY
    assert TOOL_RANGE in SITES_V4 or any(
        ipaddress.ip_network(TOOL_RANGE).subnet_of(ipaddress.ip_network(s)) for s in SITES_V4
    )
    net = ipaddress.ip_network(TOOL_RANGE)
    assert all(ipaddress.ip_address(a) in net for a in got)
    assert VIRTUAL not in got and not any(a.endswith((".0", ".255")) for a in got)
    plan = Plan(list(RECIPES.values()), list(BUILTIN), trials=50)
    assert plan.addresses_needed() == (50 + DOWNLOAD_TRIES) * len(RECIPES) * len(BUILTIN)
    assert plan.addresses_needed() <= CAPACITY
    assert plan.lab_sets()[0].startswith("fet.targets=") and TOOL_RANGE in plan.lab_sets()[0]


def test_own_tool_commands_are_split_without_a_shell() -> None:
    argv = split_command("--client", "nc -z '{server}' {port}; rm -rf /")
    assert argv == ["nc", "-z", "{server}", "{port};", "rm", "-rf", "/"]
    assert fill(argv, "198.19.240.9", 9000)[:4] == ["nc", "-z", "198.19.240.9", "9000;"]
    with pytest.raises(RecipeError, match="--server"):
        split_command("--server", "echo 'unclosed")


def test_every_recipe_names_its_package_and_citation() -> None:
    assert {"ss-aead", "ss-obfs-http", "vmess-tcp", "vmess-tls", "trojan", "obfs4", "stunnel",
            "openvpn-tcp", "wireguard"} <= set(RECIPES)  # fmt: skip
    for r in RECIPES.values():
        assert r.package and r.programs and r.citation.startswith(("spec", "no published"))
        assert r.transport in ("tcp", "udp")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tool", "nope"], "--tool 'nope': unknown"),
        (["--date", "2022-02-30"], "--date '2022-02-30'"),
        (["--tool", "ss-aead", "--tool-trials", "trojan=5"], "--tool-trials 'trojan=5'"),
        (["--client", "true"], "needs all of --client, --server and --port"),
        (["--client", "x '", "--server", "y", "--port", "9"], "--client: cannot split"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    res = gfwlab("tools", "run", *args, "--out", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_out_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    res = gfwlab("tools", "run", "--tool", "ss-aead", "--out", str(tmp_path / "full"))
    assert res.returncode == 2 and "not an empty folder" in res.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_tools_list_json() -> None:
    res = gfwlab("tools", "list", "--json", env={"PATH": "/nonexistent", "CI": ""})
    rows = json.loads(res.stdout)
    assert [r["tool"] for r in rows] == list(RECIPES)
    missing = [r for r in rows if not r["installed"]]  # nothing on this PATH (sbin still counts)
    assert {"ss-aead", "trojan", "wireguard"} <= {r["tool"] for r in missing}
    assert all(r["missing"] and r["package"] for r in missing)
    assert res.returncode == 0
    ci = gfwlab("tools", "list", env={"PATH": "/nonexistent", "CI": "1"})
    assert ci.returncode == 1 and "CI is set" in ci.stderr


def test_markdown_has_the_date_the_command_and_every_cell() -> None:
    from gfwlab.tools.matrix import markdown  # noqa: PLC0415

    drop = event("fet", "drop", "fet:no-exemption", length=120, popcount=4.0, exempt=[])
    cells = [
        cell(50, 37, drop),
        judge(Cell("wireguard", "2022-06-01", 50, 50), "none"),
        Cell("trojan", "2022-06-01", outcome="skipped", skip_reason="trojan missing"),
    ]
    cells[0].tool = "ss-aead"
    text = markdown(cells, [parse_when("2022-06-01")], "gfwlab tools run", "2026-12-01")
    assert "Generated 2026-12-01 by `gfwlab tools run`" in text
    assert "| ss-aead | degraded (13/50 blocked): 37/50 [" in text
    assert "| wireguard | passes here: no published mechanism: 50/50" in text
    assert "| trojan | skipped: trojan missing |" in text
    assert "120 bytes, 4.00 bits/byte" in text


class Peer:
    """A loopback server that runs ``serve`` on each connection, in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()

    def _run(self, serve: Callable[[socket.socket], None]) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    serve(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture()
def lab_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A lab CA in a state directory of the test's own, and a certificate for example.org."""
    monkeypatch.setenv("GFWLAB_STATE_DIR", str(tmp_path))
    cert, key = ca.make_ca(str(tmp_path / "ca"))
    return ca.make_server_cert(str(tmp_path / "web"), cert, key, [WEB_NAME], [])


def https_server(pem: tuple[str, str], answer: bytes) -> Callable[[socket.socket], None]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*pem)

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(answer)

    return serve


def test_a_workload_says_which_step_failed_and_how(lab_ca: tuple[str, str]) -> None:
    def get(port: int, timeout: float = 2.0) -> Attempt:
        return attempt(
            lambda: _https_get(
                socket.create_connection(("127.0.0.1", port), timeout=timeout), "/", timeout
            )
        )

    ok = Peer(https_server(lab_ca, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    silent = Peer(lambda conn: conn.recv(1 << 16) and time.sleep(1.0))
    refused = Peer(https_server(lab_ca, b"HTTP/1.1 403 Forbidden\r\n\r\n"))
    closing = Peer(lambda conn: conn.recv(3) and None)
    try:
        good = get(ok.port)
        assert good.ok and good.error == "" and good.seconds < 2.0
        late = get(silent.port, timeout=0.3)
        assert not late.ok and 0.3 <= late.seconds < 1.0
        assert late.error.startswith("TLS handshake: TimeoutError: "), late.error
        wrong = get(refused.port)
        assert wrong.error == "OSError: unexpected answer b'HTTP/1.1 403 Forbidden'", wrong.error
        greeting = attempt(lambda: _socks_connect(closing.port, ORIGIN, 443, 2.0, None).fileno())
        assert greeting.error == "SOCKS greeting: OSError: connection closed", greeting.error
    finally:
        for peer in (ok, silent, refused, closing):
            peer.close()
    port = ok.port  # closed now: nothing listens
    gone = attempt(lambda: _socks_connect(port, ORIGIN, 443, 2.0, None).fileno())
    assert gone.error.startswith("connect to the SOCKS proxy: ConnectionRefusedError"), gone.error
