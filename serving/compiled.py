"""AOTInductor packages of an export's dense programs: `compiled/{name}.pt2` next to
`dense/{name}.pt2`.

`torch._inductor.aoti_compile_and_package` turns each exported program into a zip holding the
generated C++ and a shared library with the weights: a C++ process loads it with
`torch::inductor::AOTIModelPackageLoader`, a Python one with `torch._inductor.aoti_load_package`,
neither needing the model's Python code. Inductor fuses the many elementwise passes of a
request program (bias terms, masks, concatenations) into a few loops, which is most of the
speed-up over the eager `torch.export` program. Compiling needs a C++ compiler; without one,
`lifeseq export` says so and skips the packages (`compiler_missing`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lifeseq.pipeline.compat import aoti_compile_and_package, aoti_load_package

#: Directory of the compiled packages inside an export.
COMPILED_DIR = "compiled"
#: Compilers Inductor can use, in the order it looks for them (`CXX` first when set).
CXX_CANDIDATES = ("g++", "c++", "clang++")


def compiler_missing() -> str | None:
    """Why no package can be compiled here (no C++ compiler on PATH), or None when one is."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else list(CXX_CANDIDATES)
    if any(shutil.which(name) for name in names):
        return None
    return (
        f"no C++ compiler ({' / '.join(names)}) on PATH: the AOTInductor packages "
        "(compiled/*.pt2) are skipped and the export serves its torch.export programs; install "
        "one (e.g. apt-get install g++) and export again for `--compiled`"
    )


def compile_program(program_path: Path, package_path: Path) -> float:
    """Compile the exported program at `program_path` into the AOTInductor package
    `package_path` (a `.pt2` zip); the seconds it took.

    Raises:
        RuntimeError: Inductor failed (the message of its error).
    """
    started = time.monotonic()
    program = torch.export.load(program_path)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        aoti_compile_and_package(program, str(package_path))
    except Exception as err:  # noqa: BLE001 (Inductor's errors have no common base)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"AOTInductor could not compile {program_path.name}: {first}") from err
    return time.monotonic() - started


def load_package(package_path: Path) -> Any:
    """A callable running the compiled package (same inputs as the exported program)."""
    return aoti_load_package(str(package_path))
