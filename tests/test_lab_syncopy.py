"""Live: a clean connection's first SYN is forwarded by the kernel and copied to the censor.

With no mechanism that decides on a SYN and no residual block held, the kernel forwards a
connection's first SYN itself and copies its headers to the censor's NFLOG group
(``live/kernel.py`` ``syn_rules``); the censor feeds the copy to the engine before the
connection's next queued packet (``live/nflog.py``). A connection then costs the queue one
packet, its request, and is judged as before: the engine's TCB starts from the real SYN. While
a residual block is held (a new connection's SYN may draw a residual reset, spec §3) the SYNs go
through the queue again, and the copies resume once the block has expired."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testenv import LAB_MARKS, curl, gfwlab, lab_for_module

pytestmark = LAB_MARKS

UP = ["--date", "2022-06-01", "--seed", "3", "--set", "http_keyword.probability=1.0",
      "--set", "http_keyword.residual_s=1", "--set", "engine.sweep_s=0.5"]  # fmt: skip
CLEAN = 20


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    yield from lab_for_module(*UP)


def stats() -> dict[str, Any]:
    time.sleep(0.6)  # the censor writes its counters every 0.5 s
    return json.loads(gfwlab("lab", "status", "--json").stdout)["stats"]  # type: ignore[no-any-return]


def reset(server: str) -> bool:
    res = curl(f"http://{server}/?q=falun")
    return res.returncode != 0 and "reset" in res.stderr.lower()


@pytest.mark.usefixtures("lab")
def test_clean_syns_skip_the_queue_and_connections_are_still_judged() -> None:
    before = stats()
    assert before["syn_copy"] is True, before
    for _ in range(CLEAN):
        assert curl("http://198.19.0.3/").returncode == 0
    clean = stats()
    fed = clean["syns_fed"] - before["syns_fed"]
    queued = clean["queued_packets"] - before["queued_packets"]
    # Each connection's SYN was copied; the queue took about one packet per connection (its
    # request), where it took two with the SYN queued.
    assert fed == CLEAN and queued < 2 * CLEAN, (before, clean)
    assert clean["syns_late"] == 0 and clean["syn_copies_lost"] == 0

    # A keyword request is reset as before: the engine had the connection's SYN (without it the
    # censor keeps no TCB and would let the request through, spec §9).
    assert reset("198.19.0.4")
    held = stats()
    assert held["syn_copy"] is False, held  # a residual block is held: SYNs are queued
    assert reset("198.19.0.4")  # the queued SYN may draw the residual reset (spec §3)

    deadline = time.monotonic() + 10
    while (now := stats())["syn_copy"] is not True:
        assert time.monotonic() < deadline, now
    assert reset("198.19.0.5")  # copied again, and judged
    after = stats()
    assert after["syns_fed"] > now["syns_fed"] and after["syns_late"] == 0
