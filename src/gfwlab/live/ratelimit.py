"""A token bucket for the live censor's anomaly events.

A flood of garbage (random UDP to port 53, bad TLS records) makes one ``anomaly`` event per
packet; written unchecked, they would fill the disk and slow the censor on the very traffic it
must survive. Like Suricata's and Zeek's rate-limited "weird" logging, the daemon passes anomaly
events through a token bucket (by default 200 a second, bursts of 1000) and counts the ones it
leaves out (``anomaly_events_suppressed`` in ``stats.json``, shown by ``gfwlab lab status``). The
engine still counts every anomaly (``anomalies``, ``events``). Verdict events (rst, drop,
dns-inject, null-route, pass, probe) are never limited: only ``action == "anomaly"`` goes through
the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RATE = 200.0
DEFAULT_BURST = 1000.0


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``allow(now)`` takes one if it can."""

    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    tokens: float = DEFAULT_BURST
    last: float | None = None
    suppressed: int = 0
    allowed: int = 0

    def allow(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.allowed += 1
            return True
        self.suppressed += 1
        return False
