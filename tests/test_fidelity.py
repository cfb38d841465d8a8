"""The fidelity report (docs/fidelity.md): every figure within its bound, and the committed
report equal to the regenerated one (``python -m gfwlab.offline.fidelity > docs/fidelity.md``)."""

from __future__ import annotations

from gfwlab.offline import fidelity, stats
from testenv import REPO


def test_report_is_within_bounds_and_current() -> None:
    results = fidelity.run_all()
    failing = [(title, c) for title, checks in results for c in checks if not c.ok]
    assert not failing, failing
    assert {title.split()[0] for title, _ in results} >= {
        "tls_sni",
        "http_keyword",
        "quic_sni",
        "ss_probing",
        "fet",
        "dns_injection",
    }
    committed = (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8")
    assert committed == fidelity.render(results), "regenerate docs/fidelity.md"


def test_the_statistics_can_fail() -> None:
    # The bounds bite: values from another distribution, counts against other shares and a rate
    # outside its interval are caught.
    uniform = [i / 1000 for i in range(1000)]
    assert stats.ks_distance(uniform, lambda x: min(1.0, max(0.0, x))) < 0.01
    assert stats.ks_distance(uniform, lambda x: min(1.0, max(0.0, x)) ** 2) > 0.2
    _, p_good = stats.chi_square([606, 387, 7], [60.66, 38.69, 0.65])
    _, p_bad = stats.chi_square([200, 790, 10], [60.66, 38.69, 0.65])
    assert p_good > 0.5 and p_bad < 1e-6
    lo, hi = stats.wilson_interval(790, 1000)
    assert not lo <= 0.387 <= hi and lo <= 0.79 <= hi


def test_chi_square_p_values() -> None:
    # Known values: chi-square 3.841 with 1 degree of freedom is p 0.05; 9.210 with 2 is 0.01.
    assert abs(stats._gamma_q(0.5, 3.841 / 2) - 0.05) < 1e-3
    assert abs(stats._gamma_q(1.0, 9.210 / 2) - 0.01) < 1e-4
    assert abs(stats._gamma_q(5.0, 2.0) - 0.947347) < 1e-5  # series branch
