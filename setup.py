"""The one compiled module, gfwlab._native (the offline index's per-record loops); everything
else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gfwlab._native",
            ["src/gfwlab/_native.c"],
            # Timestamps must be the capture reader's IEEE operations, never contracted.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    ]
)
