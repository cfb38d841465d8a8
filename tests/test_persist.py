"""Block state saved to disk and read back by a new censor (live/persist.py), and the anomaly
rate limit (live/ratelimit.py): the parts of crash recovery and flood safety that need no lab."""

from __future__ import annotations

import json
from pathlib import Path

from gfwlab.engine.actions import Report
from gfwlab.live.persist import BlockStore, restore_snapshot, snapshot
from gfwlab.live.ratelimit import TokenBucket
from gfwlab.offline.synth import https_conversation
from gfwlab.profiles import build_censor, load_profile

CLIENT, SERVER = "198.18.0.2", "198.19.0.2"


def _censor():
    return build_censor(load_profile("gfw", overrides=["tls_sni.residual_s=60"]), 5)


def _verdicts(censor, packets, base: float) -> list[tuple[str, str]]:
    out = []
    for ts, pkt in packets:
        for action in censor.feed(pkt, base + ts):
            if isinstance(action, Report) and action.event.action != "anomaly":
                out.append((action.event.mechanism, action.event.action))
    return out


def _blocked(censor, base: float) -> None:
    hits = _verdicts(censor, https_conversation(CLIENT, SERVER, 41001, "www.facebook.com"), base)
    assert ("tls_sni", "rst") in hits
    assert len(censor.residual) > 0


def _again(censor, base: float) -> list[tuple[str, str]]:
    """An unblocked name to the same server: hit only by a residual block."""
    return _verdicts(censor, https_conversation(CLIENT, SERVER, 41002, "example.org"), base)


def test_blocks_survive_a_restart_with_their_remaining_time(tmp_path: Path) -> None:
    old = _censor()
    _blocked(old, 100.0)
    assert ("tls_sni", "rst") in _again(old, 110.0)  # the residual window, before the crash
    store = BlockStore(str(tmp_path))
    assert store.save(old, now=111.0, wall=5000.0)
    assert not store.save(old, now=111.5, wall=5000.5)  # unchanged: not written again
    saved = json.loads((tmp_path / "blocks.json").read_text())
    assert saved["censors"][0]["residual"], saved

    # A new process, whose monotonic clock reads 7.0 when 20 s of wall time have passed.
    new = _censor()
    assert ("tls_sni", "rst") not in _again(_censor(), 7.5)  # without the file: no block
    assert BlockStore(str(tmp_path)).restore(new, now=7.0, wall=5020.0) == len(old.residual)
    assert ("tls_sni", "rst") in _again(new, 7.5)
    entry = next(iter(new.residual.entries.values()))
    # 60 s from the block at ~100.1, saved at 111 (wall 5000), restored at wall 5020: ~29 s left.
    assert 28.0 < entry.until - 7.0 < 30.0


def test_blocks_that_ended_while_down_are_not_restored() -> None:
    old = _censor()
    _blocked(old, 100.0)
    data = snapshot(old, now=101.0, wall=5000.0)
    new = _censor()
    assert restore_snapshot(new, data, now=3.0, wall=5000.0 + 61.0) == 0
    assert len(new.residual) == 0
    assert ("tls_sni", "rst") not in _again(new, 4.0)


def test_a_missing_or_broken_file_restores_nothing(tmp_path: Path) -> None:
    store = BlockStore(str(tmp_path))
    assert store.restore(_censor(), 1.0, 1.0) == 0
    (tmp_path / "blocks.json").write_text('{"version": 1, "censors": [')
    assert store.restore(_censor(), 1.0, 1.0) == 0
    (tmp_path / "blocks.json").write_text("[]")
    assert store.restore(_censor(), 1.0, 1.0) == 0


def test_the_token_bucket_limits_and_counts() -> None:
    bucket = TokenBucket(rate=10.0, burst=20.0, tokens=20.0)
    allowed = sum(bucket.allow(0.0) for _ in range(100))
    assert allowed == 20 and bucket.suppressed == 80
    # One second later: ten more.
    assert sum(bucket.allow(1.0) for _ in range(100)) == 10
    assert bucket.suppressed == 170 and bucket.allowed == 30
    # A clock that steps back gives nothing back, and takes nothing.
    assert not bucket.allow(0.5)
