"""Live: a clean connection's first SYN is forwarded by the kernel and copied to the censor.

With no mechanism that decides on a SYN and no residual block held, the kernel forwards a
connection's first SYN itself and copies its headers to the censor's NFLOG group
(``live/chains.py`` ``syn_rules``); the censor feeds the copy to the engine before the
connection's next queued packet (``live/nflog.py``). A connection then costs the queue one
packet, its request, and is judged as before: the engine's TCB starts from the real SYN. While
a residual block is held (a new connection's SYN may draw a residual reset, spec §3) the SYNs to
its server go through the queue again, and are copied again once the block has expired; those
to other servers are copied all along."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from testenv import LAB_MARKS, censor_stats, client, curl, gfwlab, lab_for_module

pytestmark = [*LAB_MARKS, pytest.mark.slow]  # about 15 s: the matrix stage (scripts/test)

UP = ["--date", "2022-06-01", "--seed", "3", "--set", "http_keyword.probability=1.0",
      "--set", "http_keyword.residual_s=9", "--set", "engine.sweep_s=0.5",
      "--set", "http_keyword.delay_tail=false"]  # fmt: skip
"""The residual window outlasts the counters' next write after a blocked request, so the pause
is still there to be seen. Without ``delay_tail=false`` one reset in a hundred comes after curl's
5 s timeout (spec §14j's tail), and the pause could end while curl waits."""
CLEAN = 20


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    yield from lab_for_module(*UP)


def blocked(server: str) -> tuple[bool, str]:
    """Whether a request with a blocked keyword was blocked (curl got no answer, and the censor
    reset a connection to ``server``), and what happened, for the assertion's message."""
    started = time.monotonic()
    res = curl(f"http://{server}/?q=falun")
    took = time.monotonic() - started
    events = [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]
    mine = [
        (e["flow"]["sport"], e["mechanism"], e["action"], e["rule"])
        for e in events
        if e["flow"]["dst"] == server
    ]
    port = next((p for p, m, a, _ in reversed(mine) if m == "http_keyword" and a == "rst"), None)
    done = res.returncode != 0 and port is not None
    said = f"curl {res.returncode} in {took:.1f} s {res.stderr.strip()!r}"
    return done, f"{said} {mine} {censor_stats()}"


@pytest.mark.usefixtures("lab")
def test_clean_syns_skip_the_queue_and_connections_are_still_judged() -> None:
    before = censor_stats()
    assert before["syn_copy"] is True, before
    loop = f"for i in $(seq {CLEAN}); do curl -sf -o /dev/null http://198.19.0.3/ || exit 1; done"
    assert client("sh", "-c", loop).returncode == 0
    clean = censor_stats()
    fed = clean["syns_fed"] - before["syns_fed"]
    queued = clean["queued_packets"] - before["queued_packets"]
    # Each connection's SYN was copied; the queue took about one packet per connection (its
    # request), where it took two with the SYN queued.
    assert fed == CLEAN and queued < 2 * CLEAN, (before, clean)
    assert clean["syns_late"] == 0 and clean["syn_copies_lost"] == 0

    # A keyword request is reset as before: the engine had the connection's SYN (without it the
    # censor keeps no TCB and would let the request through, spec §9).
    done, why = blocked("198.19.0.4")
    assert done, why
    held = censor_stats()
    assert held["syn_copy"] is True, f"{why} {held}"  # paused only while recording
    # The residual block holds the SYNs of its server only (every residual key holds it):
    # another server's are still copied, none drawn late.
    assert client("sh", "-c", loop).returncode == 0
    other = censor_stats()
    assert other["syns_fed"] - held["syns_fed"] == CLEAN, (held, other)
    # Blocked again: the SYN to the blocked server is queued (not copied), and draws the
    # residual reset (spec §3), or the request is reset.
    done, why = blocked("198.19.0.4")
    assert done, why
    again = censor_stats()
    assert again["syns_fed"] == other["syns_fed"] and again["syns_late"] == 0, (other, again)

    deadline = time.monotonic() + 20  # the block ends: that server's SYNs are copied again
    while censor_stats()["residual_blocks"]:
        assert time.monotonic() < deadline, censor_stats()
    time.sleep(1.5)  # the kernel's entry outlasts the engine's by its rounding (a second)
    now = censor_stats()
    done, why = blocked("198.19.0.4")
    assert done, why  # copied again, and judged
    after = censor_stats()
    assert after["syns_fed"] > now["syns_fed"] and after["syns_late"] == 0
