"""The compiled modules; everything else is in pyproject.toml.

* gfwlab._native: the offline index's per-record loops, in C.
* gfwlab.proto._initial: a QUIC client Initial's keys, header protection and AEAD, in C with
  OpenSSL's libcrypto (Debian: libssl-dev to build).
* gfwlab.rules._names: the names of a list file of bare domains, held in its text, in C.
* gfwlab.proto._scan: byte loops the censor runs on nearly every flow (a plain ClientHello's
  fields, a run of zero bytes, a payload's byte entropy), in C.
* gfwlab._craft: the packets the censor forges (UDP and TCP, with their checksums), in C.
* The engine's per-packet path, compiled from its typed sources with mypyc (the list and why:
  src/gfwlab/_build.py), unless GFWLAB_PURE=1 is set at install time. A compiled build writes
  the digest of those sources beside them, so that a source changed later is run instead of
  the stale compiled module, and the compiled classes' annotations as written (the compiler
  keeps erased types; the profile loader checks values against the written ones).
"""

import json
import os
import runpy
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = Path(__file__).resolve().parent / "src"
build = runpy.run_path(str(SRC / "gfwlab" / "_build.py"))

native = Extension(
    "gfwlab._native",
    ["src/gfwlab/_native.c"],
    # Timestamps must be the capture reader's IEEE operations, never contracted.
    extra_compile_args=["-O2", "-ffp-contract=off"],
)

initial = Extension(
    "gfwlab.proto._initial",
    ["src/gfwlab/proto/_initial.c"],
    extra_compile_args=["-O2"],
    libraries=["crypto"],
)


names = Extension("gfwlab.rules._names", ["src/gfwlab/rules/_names.c"], extra_compile_args=["-O2"])

scan = Extension(
    "gfwlab.proto._scan",
    ["src/gfwlab/proto/_scan.c"],
    # The entropy must be the float the Python definition gives: no fused multiply-add.
    extra_compile_args=["-O2", "-ffp-contract=off"],
    libraries=["m"],
)

craft = Extension("gfwlab._craft", ["src/gfwlab/_craft.c"], extra_compile_args=["-O2"])


class BuildExt(build_ext):
    """build_ext that records which sources the compiled modules were made from."""

    def run(self) -> None:
        out = SRC / "gfwlab" if self.inplace else Path(self.build_lib) / "gfwlab"
        if self.inplace and not compiled:  # a pure build: no compiled module may shadow a source
            (out / build["DIGEST_FILE"]).unlink(missing_ok=True)
            (out / build["ANNOTATIONS_FILE"]).unlink(missing_ok=True)
            for module in build["COMPILED"]:
                stem = build["source"](out, module).with_suffix("")
                for lib in stem.parent.glob(stem.name + ".*.so"):
                    lib.unlink()
            for lib in SRC.glob("gfwlab__mypyc.*.so"):
                lib.unlink()
        super().run()
        if compiled:
            out.mkdir(parents=True, exist_ok=True)
            (out / build["DIGEST_FILE"]).write_text(build["record"](SRC / "gfwlab"))
            texts = build["annotation_texts"](SRC / "gfwlab")
            (out / build["ANNOTATIONS_FILE"]).write_text(json.dumps(texts, indent=1) + "\n")


compiled: list[Extension] = []
if not build["pure_requested"]():
    from mypyc.build import mypycify

    os.chdir(SRC.parent)  # mypycify takes paths relative to the project
    compiled = mypycify(
        [
            # The strict check is the project's own (mypy, in CI); here mypy only types the
            # code for the compiler, and the build needs none of the dependencies installed.
            "--config-file=",
            "--ignore-missing-imports",
            *(str(build["source"](Path("src/gfwlab"), m)) for m in build["COMPILED"]),
        ],
        opt_level="3",
        group_name="gfwlab",
    )

setup(ext_modules=[native, initial, names, scan, craft, *compiled], cmdclass={"build_ext": BuildExt})
