"""gfwlab evade run, live, against the TLS SNI, DNS and QUIC censors (spec §4a, §2, §5), and
``--explain`` from the censor's recording replayed offline.

One lab (2024-06-01, short residuals, the type-II injector so every SNI reset is three RST+ACKs,
no QUIC block latency: the lab's sub-millisecond path would finish a handshake before it) and a
few trials per strategy: each row is deterministic in the lab (no probability below 1 on the
path), so the baseline fails every time and the known-good strategy succeeds every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from testenv import LAB_MARKS, gfwlab, lab_for_module

pytestmark = LAB_MARKS

UP = ["--date", "2024-06-01", "--seed", "4",
      "--set", "tls_sni.residual_s=2", "--set", "tls_sni.injector='type2'",
      "--set", "tls_sni.delay_tail=false",
      "--set", "quic_sni.residual_s=2", "--set", "quic_sni.block_latency_ms=[]"]  # fmt: skip
BASELINE = "\\/"
TLS_RECORDS = "[TCP:flags:PA]-fragment{tls:20:True}-| \\/"
TCP_SEGMENTS = "[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-| \\/"
# Geneva's DNS strategy (library.py, spec §14c) drops the first two answers from port 53; every
# one of the lab's three injectors covers www.google.com, so two drops leave a forged answer.
DNS_DROP_2 = "\\/ [UDP:sport:53:2]-drop-|"
DNS_DROP_3 = "\\/ [UDP:sport:53:3]-drop-|"
# A first datagram that is not a QUIC Initial exempts the flow (spec §5: "14 zero bytes").
QUIC_DECOY = "[UDP:dport:443:1]-duplicate(tamper{UDP:load:replace:gfwlab},)-| \\/"


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    yield from lab_for_module(*UP)


def evade(strategy: str, against: str, trials: int, *extra: str) -> dict[str, object]:
    res = gfwlab("evade", "run", "-s", strategy, "--against", against, "--trials", str(trials),
                 "--json", *extra, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


@pytest.mark.usefixtures("lab")
def test_tls_sni_baseline_fails_and_a_split_clienthello_gets_through() -> None:
    assert evade(BASELINE, "tls_sni", 2)["successes"] == 0
    # TLS records are not reassembled (S&P'25, confirmed 2024-04-04): the split gets through.
    assert evade(TLS_RECORDS, "tls_sni", 3)["successes"] == 3
    # TCP segments are reassembled by 2024 (GFWeb): small segments no longer help.
    assert evade(TCP_SEGMENTS, "tls_sni", 2)["successes"] == 0


@pytest.mark.usefixtures("lab")
def test_dns_injection_drop_the_forged_answers() -> None:
    assert evade(BASELINE, "dns_injection", 2)["successes"] == 0
    assert evade(DNS_DROP_2, "dns_injection", 2)["successes"] == 0
    assert evade(DNS_DROP_3, "dns_injection", 3)["successes"] == 3


@pytest.mark.usefixtures("lab")
def test_quic_sni_a_decoy_first_datagram_exempts_the_flow() -> None:
    assert evade(BASELINE, "quic_sni", 2)["successes"] == 0
    assert evade(QUIC_DECOY, "quic_sni", 3)["successes"] == 3


@pytest.mark.usefixtures("lab")
def test_explain_replays_the_failed_trial_through_the_engine() -> None:
    doc = evade(BASELINE, "tls_sni", 1, "--explain")
    assert doc["successes"] == 0
    ex = doc["explain"]
    assert isinstance(ex, dict) and ex["replay_censored"] is True, ex
    assert "tls_sni rst (facebook.com)" in ex["verdict"]
    views = [view for _pkt, view in ex["trace"]]
    pkts = [pkt for pkt, _view in ex["trace"]]
    # The handshake as the censor tracks it, then the ClientHello that blocks the flow. The
    # recording holds what the censor was shown: the client's handshake ACK only where a
    # mechanism needs it (live/kernel.py lets it bypass the queue otherwise).
    hello = next(i for i, p in enumerate(pkts) if p.startswith("client PA") and " len 0 " not in p)
    assert views[:2] == ["syn-seen, stream 0 bytes, 0 held", "established, stream 0 bytes, 0 held"]
    assert set(views[2:hello]) <= {"established, stream 0 bytes, 0 held"}, views
    assert views[hello] == "blocked"
    assert any("(forged by the censor)" in p for p in pkts)
    # A strategy that gets through has nothing to explain, and the run says so.
    text = gfwlab("evade", "run", "-s", TLS_RECORDS, "--against", "tls_sni", "--trials", "1",
                  "--explain", timeout=60)  # fmt: skip
    assert text.returncode == 0 and "no trial failed" in text.stdout, text.stderr
