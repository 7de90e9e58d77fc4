"""Static check of the one-way import rule (STYLE.md rule 1), by parsing source, never importing.

Layers: pipeline → features → models → trainers → jobs/serving. A package may import its own
layer or a lower one, never a higher one; a few heavy third-party packages are banned per layer
(Spark code never imports torch; `models/` never imports lightning, pyspark or webdataset).
Every `import`/`from ... import` counts, including those inside functions and under
`TYPE_CHECKING`, and `importlib.import_module("...")`/`__import__("...")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Layer of each first-party package; imports may only go to the same or a lower layer.
LAYERS: dict[str, int] = {
    "pipeline": 0,
    "features": 1,
    "models": 2,
    "trainers": 3,
    "jobs": 4,
    "serving": 4,
}
#: Third-party top-level modules a first-party package must never import.
BANNED_THIRD_PARTY: dict[str, frozenset[str]] = {
    "pipeline": frozenset({"torch", "lightning", "pytorch_lightning", "torchrec", "webdataset"}),
    "features": frozenset({"pyspark"}),
    "models": frozenset({"lightning", "pytorch_lightning", "pyspark", "webdataset"}),
}


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted module name of a source file under `root`, and whether it is a package `__init__`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of `from {'.' * level}{target} import ...` written in `module`."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imported_modules(
    source: str, module: str, is_package: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield `(line, absolute dotted name)` of every module imported by `source`."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                yield node.lineno, node.module
                continue
            base = _resolve_relative(module, is_package, node.level, node.module)
            if node.module is None:  # `from . import a, b` imports submodules a and b
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
            else:
                yield node.lineno, base
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                yield node.lineno, arg.value


def check_source(source: str, module: str, path: str, is_package: bool = False) -> list[str]:
    """Violations of the import rules in one source file, as `path:line: message` strings."""
    package = module.split(".")[0]
    layer = LAYERS[package]
    banned = BANNED_THIRD_PARTY.get(package, frozenset())
    violations = []
    for line, name in sorted(imported_modules(source, module, is_package)):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS[top] > layer:
            violations.append(
                f"{path}:{line}: {package} (layer {layer}) imports {name} "
                f"(layer {LAYERS[top]}); imports must flow pipeline → features → models → "
                "trainers → jobs/serving"
            )
        elif top in banned:
            violations.append(f"{path}:{line}: {package} must never import {top} ({name})")
    return violations


def source_files(root: Path) -> Iterator[Path]:
    """Python files of the first-party packages under `root`."""
    for package in sorted(LAYERS):
        directory = root / package
        if directory.is_dir():
            yield from sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def check_repo(root: Path) -> tuple[int, list[str]]:
    """Number of files checked and all violations under `root`."""
    violations: list[str] = []
    count = 0
    for path in source_files(root):
        module, is_package = module_name(path, root)
        source = path.read_text(encoding="utf-8")
        violations += check_source(source, module, str(path.relative_to(root)), is_package)
        count += 1
    return count, violations


# --- the rule on this repository --------------------------------------------------------------


def test_repository_imports_flow_one_way() -> None:
    count, violations = check_repo(REPO_ROOT)

    assert count >= 10, f"only {count} source files found under {REPO_ROOT}; wrong root?"
    assert not violations, "import rule violations:\n" + "\n".join(violations)


def test_every_layer_package_exists() -> None:
    missing = [name for name in LAYERS if not (REPO_ROOT / name / "__init__.py").is_file()]
    assert not missing


# --- the checker catches what it should -------------------------------------------------------


def test_checker_flags_banned_third_party_with_line() -> None:
    source = "import numpy as np\n\n\ndef f():\n    import torch.nn\n    return np\n"

    assert check_source(source, "pipeline.shards", "pipeline/shards.py") == [
        "pipeline/shards.py:5: pipeline must never import torch (torch.nn)"
    ]


def test_checker_flags_upward_first_party_imports() -> None:
    source = (
        "from pipeline import storage\n"
        "from models.hstu import HSTU\n"
        "import trainers.module\n"
        "from features.schema import Schema\n"
    )

    violations = check_source(source, "features.loader", "features/loader.py")

    assert [v.split(": ")[0] for v in violations] == [
        "features/loader.py:2",
        "features/loader.py:3",
    ]
    assert "imports models.hstu (layer 2)" in violations[0]


def test_checker_resolves_relative_imports() -> None:
    source = "from . import schema\nfrom .codec import decode\nfrom .. import models\n"

    assert list(imported_modules(source, "features.loader")) == [
        (1, "features.schema"),
        (2, "features.codec"),
        (3, "models"),
    ]
    assert list(imported_modules("from ..pipeline import x\n", "models.gsu.sim")) == [
        (1, "models.pipeline")
    ]
    assert list(imported_modules("from .sim import x\n", "models.gsu", is_package=True)) == [
        (1, "models.gsu.sim")
    ]
    violations = check_source(source, "features.loader", "features/loader.py")
    assert len(violations) == 1 and violations[0].startswith("features/loader.py:3:")


def test_checker_flags_dynamic_imports_and_models_bans() -> None:
    source = (
        "import importlib\n"
        "pl = importlib.import_module('pytorch_lightning')\n"
        "wds = __import__('webdataset')\n"
        "from lightning.pytorch import Trainer\n"
        "import torchrec\n"
    )

    violations = check_source(source, "models.din", "models/din.py")

    assert [v.split(": ")[0] for v in violations] == [
        "models/din.py:2",
        "models/din.py:3",
        "models/din.py:4",
    ]


def test_checker_allows_downward_imports_and_similar_names() -> None:
    source = (
        "import torch\nimport torchvision\nimport lightning\n"
        "from pipeline.sample_codec import decode_members\nfrom features import schema\n"
        "from models.hstu import HSTU\nimport serving\n"
    )

    assert check_source(source, "jobs.train", "jobs/train.py") == []
    assert check_source("import torchmetrics\nimport pyspark\n", "pipeline.x", "p.py") == []
    assert check_source("import pipelines\n", "pipeline.x", "p.py") == []


def test_check_repo_reports_file_and_line_of_each_violation(tmp_path: Path) -> None:
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "pipeline" / "shards.py").write_text(
        '"""Doc."""\nimport os\nimport webdataset\n', encoding="utf-8"
    )
    (tmp_path / "trainers" / "sub").mkdir()
    (tmp_path / "trainers" / "sub" / "loop.py").write_text(
        "from ...jobs import cli\n", encoding="utf-8"
    )

    count, violations = check_repo(tmp_path)

    assert count == 8
    assert [v.split(": ")[0] for v in violations] == [
        "pipeline/shards.py:3",
        "trainers/sub/loop.py:1",
    ]
