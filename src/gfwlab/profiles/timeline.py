"""The timeline picture: every mechanism's active window on one chart (``docs/timeline.svg``).

``gfwlab mechanisms --timeline FILE`` (or ``python -m gfwlab.profiles.timeline FILE``) draws, for
the profile (and ``--network``), one mark per mechanism window: a bar for a span of days (an
open end runs to the chart's right edge, with an arrow), a diamond for a dated event that lasted
minutes or hours (its times are in the label), and a hatched bar for a mechanism the profile has
switched off (``tls_in_tls``: a hypothesis). Dated parameters that change a mechanism within its
window (QUIC's outbound-only date, the networks' TLS-record reassembly) are drawn as ticks on its
row. The output is deterministic (no timestamp, fixed hash salt), so the committed file can be
compared with a fresh rendering.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from gfwlab.profiles.loader import load_profile
from gfwlab.rules.profile import Profile


@dataclass(frozen=True, slots=True)
class Mark:
    """One window drawn on the chart."""

    mechanism: str
    kind: str
    """``span`` (days), ``event`` (minutes or hours) or ``off`` (disabled in the profile)."""
    start: dt.datetime
    end: dt.datetime
    open_end: bool
    label: str


def _num(when: dt.datetime) -> float:
    """Matplotlib's date number (its date functions are untyped)."""
    return float(mdates.date2num(when))  # type: ignore[no-untyped-call]


def _utc(day: dt.date) -> dt.datetime:
    if isinstance(day, dt.datetime):
        return day.astimezone(dt.UTC)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def marks(profile: Profile) -> list[Mark]:
    """One mark per mechanism window of ``profile``, in the profile's order."""
    bounds = [b for p in profile.mechanisms.values() for b in p.active.bounds() if b is not None]
    first = _utc(profile.measured_from) if profile.measured_from else min(bounds)
    horizon = max(bounds, default=first) + dt.timedelta(days=400)
    out = []
    for name, p in profile.mechanisms.items():
        lo, hi = p.active.bounds()
        start, end = lo or first, hi or horizon
        if not p.enabled:
            out.append(Mark(name, "off", start, end, hi is None, "off by default (hypothesis)"))
        elif p.active.timed and hi is not None and hi - start < dt.timedelta(days=60):
            label = (
                f"{start:%Y-%m-%d %H:%M}–{hi:%H:%M} UTC"
                if hi - start < dt.timedelta(days=1)
                else (f"{start:%Y-%m-%d %H:%M} UTC – {hi:%Y-%m-%d}")
            )
            out.append(Mark(name, "event", start, end, False, label))
        else:
            label = f"{start:%Y-%m-%d} → " + ("" if hi is None else f"{hi:%Y-%m-%d}")
            out.append(Mark(name, "span", start, end, hi is None, label))
    return out


def _ticks(profile: Profile) -> dict[str, list[tuple[dt.datetime, str]]]:
    """Dates within a window at which a mechanism's behaviour changes (dated parameters)."""
    out: dict[str, list[tuple[dt.datetime, str]]] = {}
    for name, p in profile.mechanisms.items():
        for attr, what in (
            ("outbound_only_from", "outbound only"),
            ("record_reassembly_from", "TLS records joined"),
        ):
            value = getattr(p, attr, "")
            if value:
                out.setdefault(name, []).append((_utc(dt.date.fromisoformat(value)), what))
    return out


def draw(profile: Profile, network: str = "national") -> tuple[Figure, list[Mark]]:
    """The chart, and the marks drawn on it (one artist per mark, in the axes' ``gfwlab``
    group: see :func:`mark_artists`)."""
    plt.rcParams["svg.hashsalt"] = "gfwlab"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: the labels can be read and checked
    ms = marks(profile)
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(ms) + 1.6))
    ticks = _ticks(profile)
    for row, m in enumerate(ms):
        y = len(ms) - 1 - row
        if m.kind == "event":
            (art,) = ax.plot(
                [_num(m.start)], [y], marker="D", markersize=9, color="#c0392b", linestyle=""
            )
            ax.annotate(
                m.label,
                (_num(m.start), y),
                xytext=(8, 6),
                textcoords="offset points",
                fontsize=8,
                color="#c0392b",
            )
        else:
            width = _num(m.end) - _num(m.start)
            colour = "#bbbbbb" if m.kind == "off" else "#2e86c1"
            art = ax.barh(
                y,
                width,
                left=_num(m.start),
                height=0.5,
                color=colour,
                hatch="//" if m.kind == "off" else None,
                edgecolor="#555555",
            )[0]
            if m.open_end:
                ax.annotate(
                    "",
                    (_num(m.end) + 150, y),
                    (_num(m.end), y),
                    arrowprops={"arrowstyle": "->", "color": colour},
                )
            ax.annotate(
                m.label,
                (_num(m.start), y),
                xytext=(2, 10),
                textcoords="offset points",
                fontsize=7,
                color="#333333",
            )
        art.set_gid(f"gfwlab-mark-{m.mechanism}")
        for when, what in ticks.get(m.mechanism, []):
            ax.plot([_num(when)], [y], marker="|", markersize=14, color="#d35400", linestyle="")
            ax.annotate(
                what,
                (_num(when), y),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=7,
                color="#d35400",
            )
    ax.set_yticks(range(len(ms)), [m.mechanism for m in reversed(ms)])
    ax.xaxis_date()
    ax.xaxis.set_major_locator(mdates.YearLocator(2))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))  # type: ignore[no-untyped-call]
    ax.set_ylim(-0.8, len(ms) - 0.2)
    ax.grid(axis="x", color="#eeeeee")
    network = "" if network == "national" else f", network {network}"
    ax.set_title(
        f"When each mechanism of profile {profile.name!r} was active{network}", fontsize=10
    )
    fig.tight_layout()
    return fig, ms


def mark_artists(fig: Figure) -> list[str]:
    """The ids of the mark artists on ``fig`` (one per mark)."""
    gids = [str(a.get_gid() or "") for ax in fig.axes for a in ax.get_children()]
    return [g for g in gids if g.startswith("gfwlab-mark-")]


def write(profile: Profile, path: str, network: str = "national") -> list[Mark]:
    """Draw ``profile``'s timeline into ``path`` (SVG or PNG, by its extension)."""
    fig, ms = draw(profile, network)
    fmt = "png" if path.lower().endswith(".png") else "svg"
    meta = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(path, format=fmt, metadata=meta, dpi=110)
    plt.close(fig)
    return ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="docs/timeline.svg")
    parser.add_argument("--profile", default="gfw")
    parser.add_argument("--network", default="national")
    args = parser.parse_args(argv)
    ms = write(load_profile(args.profile, network=args.network), args.path, args.network)
    print(f"{args.path}: {len(ms)} windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
