"""The docs stay true to the code."""

from __future__ import annotations

from pathlib import Path

from gfwlab.mechanisms import registry
from gfwlab.profiles.reference import readable, render, render_events, render_tcb

ROOT = Path(__file__).resolve().parents[1]


def test_profile_reference_is_current() -> None:
    # Regenerate with: python -m gfwlab.profiles.reference > docs/profiles.md
    assert (ROOT / "docs" / "profiles.md").read_text(encoding="utf-8") == render()


def test_event_field_reference_is_current() -> None:
    # Regenerate with: python -m gfwlab.profiles.reference --events > docs/events.md
    # (rendering fails on a declared event field without a docstring)
    assert (ROOT / "docs" / "events.md").read_text(encoding="utf-8") == render_events()


def test_every_mechanism_cites_its_source_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, cls in registry().items():
        assert "spec §" in cls.citation, name
        doc = readable(__import__(cls.__module__, fromlist=["x"])).__doc__ or ""
        assert "spec §" in doc and "Source" in doc, name
        assert f"`{name}`" in readme, name


def test_tcb_diagram_is_current() -> None:
    # Regenerate with: python -m gfwlab.profiles.reference --tcb > docs/tcb.md
    assert (ROOT / "docs" / "tcb.md").read_text(encoding="utf-8") == render_tcb()
