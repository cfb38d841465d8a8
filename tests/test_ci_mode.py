"""Under ``$CI`` a skip is a failure that names what is missing (the hook in conftest.py).

Each test runs a small test file through pytest (``pytester``, with this directory's conftest.py
as a plugin) with CI set and unset, and checks the outcomes.
"""

from __future__ import annotations

import pytest

from testenv import MAY_SKIP

SKIPPING = f"""
import pytest

pytestmark = pytest.mark.skipif(False, reason="never")


@pytest.mark.skipif(True, reason="missing programs: frobnicate")
def test_skipif_mark():
    pass


def test_skip_call():
    pytest.skip("needs root")


@pytest.fixture
def namespaces():
    pytest.skip("cannot make network namespaces here")


def test_skip_in_fixture(namespaces):
    pass


@pytest.mark.skipif(True, reason="{MAY_SKIP} root ignores directory permissions")
def test_allowed_skip():
    pass


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfail():
    assert False


def test_pass():
    pass
"""

MODULE_SKIP = """
import pytest

pytestmark = pytest.mark.skipif(True, reason="the lab needs root")


def test_one():
    pass


def test_two():
    pass
"""

IMPORT_SKIP = """
import pytest

pytest.importorskip("no_such_module_gfwlab")


def test_never():
    pass
"""


def run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, source: str
) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_it=source)
    return pytester.runpytest("-p", "conftest", "-p", "no:hypothesispytest", "-rA")


@pytest.mark.parametrize("ci", [None, "", "0", "false", "False"])
def test_without_ci_skips_are_skips(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, SKIPPING)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == 0


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_with_ci_skips_fail_naming_what_is_missing(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, SKIPPING)
    # A skip in setup (marks, fixtures) fails as an error, a skip in the test body as a failure.
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, failed=1, errors=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines_random(
        [
            "ERROR *test_skipif_mark - CI is set, * missing programs: frobnicate",
            "FAILED *test_skip_call - CI is set, so this skip is a failure: needs root",
            "ERROR *test_skip_in_fixture - CI is set, so this skip is a failure: cannot make*",
            f"SKIPPED * {MAY_SKIP} root ignores directory permissions",
        ]
    )


def test_with_ci_a_module_level_skipif_fails_every_test(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", MODULE_SKIP)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*CI is set, so this skip is a failure: the lab needs root*"])
    result = run(pytester, monkeypatch, None, MODULE_SKIP)
    result.assert_outcomes(skipped=2)


def test_with_ci_a_module_skipped_at_import_fails(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", IMPORT_SKIP)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI is set, so this skip is a failure: *no_such_module_gfwlab*"])
    result = run(pytester, monkeypatch, None, IMPORT_SKIP)
    result.assert_outcomes(skipped=1)
    assert result.ret == 5  # nothing left to run: what CI must never see
