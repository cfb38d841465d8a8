"""``lab up --hops``: TTL-limited packets pass the censor and die before the server (spec §9 (b)).

Real ping through the lab: the censor forwards (one router) and the default 12 routers behind it
drop what would expire on the way, so a packet sent with TTL 13 dies and one with TTL 14 arrives.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gfwlab.live.topology import DEFAULT_HOPS, SERVER_V4
from testenv import LAB_MARKS, UP, client, gfwlab, lab_for_module, needs_tools

pytestmark = [*LAB_MARKS, needs_tools("ping")]


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    yield from lab_for_module(*UP)


def ping(ttl: int) -> bool:
    res = client("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-t", str(ttl), SERVER_V4)
    return res.returncode == 0


@pytest.mark.usefixtures("lab")
def test_default_topology_drops_what_expires_behind_the_censor() -> None:
    assert DEFAULT_HOPS == 12
    assert not ping(DEFAULT_HOPS + 1)  # the censor's hop plus 12: TTL 13 expires on the way
    assert ping(DEFAULT_HOPS + 2)
    assert not ping(10)  # Geneva's TTL-limited insertions (TTL 8, 10) never reach the server
    status = gfwlab("lab", "status", "--json")
    assert '"hops": 12' in status.stdout, status.stdout
