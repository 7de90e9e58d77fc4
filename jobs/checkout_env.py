"""Run another checkout's code in a subprocess: the environment that makes `lifeseq.*` resolve to
that checkout's folders instead of this installation's.

The side-by-side benchmarks (`lifeseq bench latency`, `lifeseq bench http --baseline-repo`)
time an older checkout beside this one. This installation maps `lifeseq.pipeline` … to its own
folders (setuptools `package_dir`), so `PYTHONPATH=CHECKOUT` alone would run this code. A
scratch folder holding `lifeseq/<package>` links to the checkout's package folders comes first
on `PYTHONPATH` (a path entry wins over the editable install's finder); the checkout itself
follows, for checkouts from before the `lifeseq` namespace, whose modules import `serving.…`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lifeseq.trainers.legacy import PACKAGE_FOLDERS


def checkout_environment(repo: Path, scratch: Path) -> dict[str, str]:
    """`os.environ` with `PYTHONPATH` set so that `python -m lifeseq.jobs.…` in a subprocess
    runs checkout `repo`'s code; links are made under `scratch` (kept by the caller while the
    subprocess runs)."""
    shim = scratch / "lifeseq-checkout" / "lifeseq"
    shim.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FOLDERS:
        source, link = Path(repo).resolve() / name, shim / name
        if source.is_dir() and not link.exists():
            link.symlink_to(source, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(repo)])}
