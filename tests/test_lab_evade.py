"""gfwlab evade run, live: a strategy on the client's real packets, real curl through the lab.

Verdicts come from the packets on the wire (the censor daemon has no channel from evade); TTL-
limited insertions die before the server on the default topology (--hops 12). Nothing stays
attached after evade ends, after Ctrl-C, or (via the record on disk) after kill -9.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv import LAB_MARKS, client, gfwlab, lab_for_module

pytestmark = LAB_MARKS

UP = ["--date", "2020-01-15", "--seed", "5", "--set", "http_keyword.probability=1.0",
      "--set", "http_keyword.residual_s=1", "--set", "http_keyword.delay_tail=false"]  # fmt: skip
SEGMENTED = "[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-| \\/"
# Come as You Are (Bock et al., SIGCOMM 2020), a server-side China strategy (spec §14c, published
# "near 100%" against ESNI blocking): a SYN/ACK advertising a 4-byte window makes the client's
# own TCP send the request's first 4 bytes alone, a segment the 2020 GFW did not reassemble.
SERVER_WINDOW = "[TCP:flags:SA]-tamper{TCP:window:replace:4}-| \\/"
TTL_DESYNC = (
    "[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{IP:ttl:replace:10},),)-| \\/"
)


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    yield from lab_for_module(*UP)


def attached() -> list[str]:
    rules = client("iptables", "-w", "-t", "mangle", "-S").stdout.splitlines()
    return [r for r in rules if "NFQUEUE" in r]


def evade(strategy: str, trials: int, *extra: str) -> dict[str, object]:
    res = gfwlab("evade", "run", "-s", strategy, "--trials", str(trials), "--json", *extra,
                 timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


@pytest.mark.usefixtures("lab")
def test_baseline_is_censored_and_published_strategies_get_through() -> None:
    assert evade("\\/", 4)["successes"] == 0
    assert evade(SEGMENTED, 4)["successes"] == 4
    # The TTL-10 copy passes the censor and dies on the 12 routers behind it.
    assert evade(TTL_DESYNC, 4)["successes"] == 4
    assert attached() == []


@pytest.mark.usefixtures("lab")
def test_a_server_side_strategy_runs_in_the_server_namespace() -> None:
    assert evade("\\/", 3, "--side", "server")["successes"] == 0
    doc = evade(SERVER_WINDOW, 3, "--side", "server")
    assert doc["successes"] == 3 and doc["side"] == "server"
    assert attached() == []
    rules = gfwlab("lab", "exec", "server", "--", "iptables", "-w", "-t", "mangle", "-S").stdout
    assert "NFQUEUE" not in rules


@pytest.mark.usefixtures("lab")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_nothing_stays_attached_after_ctrl_c_or_kill_9(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfwlab", "evade", "run", "-s", SEGMENTED, "--trials", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not attached():
        assert time.monotonic() < deadline, "evade never attached"
        time.sleep(0.1)
    record = json.loads(Path("/run/gfwlab/evade.json").read_text(encoding="utf-8"))
    proc.send_signal(sig)
    proc.wait(timeout=20)
    if sig == signal.SIGKILL:
        assert attached(), "kill -9 leaves the rules; the record on disk names them"
        status = gfwlab("lab", "status")
        assert "removed what a killed evade left attached" in status.stdout + status.stderr
    assert attached() == []
    assert not Path("/run/gfwlab/evade.json").exists()
    stat = Path(f"/proc/{record['pid']}/stat")
    time.sleep(0.2)
    assert not stat.exists() or ") Z " in stat.read_text()


SCAPY = Path(__file__).resolve().parent / "scapy_geneva.py"
BY_HAND = {"baseline": "\\/", "ttl_desync": TTL_DESYNC, "segments": SEGMENTED}


@pytest.mark.usefixtures("lab")
def test_packets_built_with_scapy_get_the_verdicts_evade_gets() -> None:
    """The censor has no channel from evade: the same strategies' packets, built with scapy from
    the published descriptions and sent without gfwlab, get the same verdicts live."""
    for i, (family, strategy) in enumerate(BY_HAND.items()):
        by_evade = evade(strategy, 1)["successes"]
        time.sleep(1.2)  # out of the 1 s residual window the last trial may have left
        res = client(sys.executable, str(SCAPY), "198.19.0.9", str(51000 + i), family)
        assert res.returncode == 0, res.stderr
        by_scapy = res.stdout.strip()
        assert by_evade in (0, 1), (family, by_evade)
        assert by_scapy == ("evaded" if by_evade == 1 else "censored"), (family, by_evade)
    assert attached() == []
