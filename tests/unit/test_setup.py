"""`make setup` installs without pip's resolver error and checks what it installed: torchrec
goes in after `base.txt` with `--no-deps`, and `requirements/pip_check.py` passes only the two
conflicts accepted on purpose (torchrec's CUDA `fbgemm-gpu` and `torchmetrics` pins)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "requirements" / "pip_check.py"


def _pip_check_module():  # noqa: ANN202 - a script, loaded from its path
    spec = importlib.util.spec_from_file_location("pip_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_two_accepted_conflicts_pass() -> None:
    pip_check = _pip_check_module()
    known = (
        "torchrec 1.8.0 requires fbgemm-gpu, which is not installed.\n"
        "torchrec 1.8.0 has requirement torchmetrics==1.0.3, but you have torchmetrics 1.9.0.\n"
    )
    assert pip_check.unexpected(known) == []
    assert pip_check.unexpected("No broken requirements found.\n") == []
    other = "lightning 2.6.6 has requirement torch>=2.1, but you have torch 1.0.\n"
    assert pip_check.unexpected(known + other) == [other.strip()]
    assert pip_check.unexpected("torchrec 1.8.0 requires tensordict, which is not installed.") != []


def test_the_environment_passes_pip_check() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pip check: OK")


def test_make_setup_installs_torchrec_after_base_without_deps_then_checks() -> None:
    recipe = (REPO_ROOT / "Makefile").read_text()
    installs = re.findall(r"install -q (.*)", recipe)
    order = [
        next(r for r in ("torch-cpu", "base", "torchrec", "-e .") if r in line) for line in installs
    ]
    assert order == ["torch-cpu", "base", "torchrec", "-e ."], installs
    assert "--no-deps -r requirements/torchrec.txt" in recipe
    assert recipe.index("$(PY) requirements/pip_check.py") > recipe.index(
        "--no-deps -r requirements/torchrec.txt"
    )
