"""lifeseq installs as one namespace: in a fresh venv outside the repository, the built wheel
gives `lifeseq.models`, `lifeseq.jobs.cli`, ... and no top-level `models`, `jobs`, `pipeline`,
`features`, `trainers` or `serving` that would collide with a user's own packages."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from lifeseq.trainers.legacy import PACKAGE_FOLDERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json
result = {}
for name in ("models", "jobs", "pipeline", "features", "trainers", "serving"):
    try:
        importlib.import_module(name)
        result[name] = "imported"
    except ModuleNotFoundError:
        result[name] = "missing"
import lifeseq.models.zoo, lifeseq.pipeline.vocab, lifeseq.jobs.cli
result["lifeseq.models.zoo"] = lifeseq.models.zoo.__file__
from lifeseq.models.interfaces import LongTermUnit
result["zoo"] = lifeseq.models.zoo.choices(LongTermUnit)
print(json.dumps(result))
"""


def test_setup_cfg_lists_every_package_under_the_namespace() -> None:
    """A package folder missing from `setup.cfg`'s explicit list would be left out of the wheel."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {
        "lifeseq." + ".".join(p.parent.relative_to(REPO_ROOT).parts)
        for folder in PACKAGE_FOLDERS
        for p in (REPO_ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == found
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {f"lifeseq.{folder}": folder for folder in PACKAGE_FOLDERS}


def test_a_fresh_venv_outside_the_repository_imports_lifeseq_only(tmp_path: Path) -> None:
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # setuptools writes build/ there
    for name in PACKAGE_FOLDERS:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("lifeseq-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    # lifeseq's dependencies (torch, ...) from this environment, as a plain path entry: its
    # .pth files (this checkout's editable install among them) are not run from there.
    site = Path(sysconfig.get_paths()["purelib"])
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (fresh_site / "dependencies.pth").write_text(f"{site}\n")

    done = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {name: result[name] for name in PACKAGE_FOLDERS} == {
        name: "missing" for name in PACKAGE_FOLDERS
    }
    assert result["lifeseq.models.zoo"].startswith(str(fresh_site))
    assert "lifeseq.models.zoo.long_term.twin.Twin" in result["zoo"]
    cli = subprocess.run(
        [str(env_dir / "bin" / "lifeseq"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert cli.returncode == 0 and "lifeseq" in cli.stdout, cli.stderr
