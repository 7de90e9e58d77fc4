"""Static check of the one-way import rule (STYLE.md rule 1), by parsing source, never importing.

Layers: pipeline → features → models → trainers → jobs/serving, each installed as
`lifeseq.<layer>`; importing a layer by its folder name (`import models`) is the old, colliding
namespace and fails too. A package may import its own
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


#: The namespace every first-party package installs under.
NAMESPACE = "lifeseq"
#: The one module wrapping private third-party APIs (`pipeline/compat.py`): it may import a
#: library its layer bans inside a function (never at module level).
COMPAT = "lifeseq.pipeline.compat"
#: Private attributes of third-party objects we know of (`SparkContext._gateway`, TorchRec's
#: `dmp._env`, Lightning's `optimizer._optimizer`, `torch._inductor`, PySpark's JVM handles).
PRIVATE_ATTRIBUTES = frozenset({"_gateway", "_env", "_optimizer", "_inductor", "_jvm", "_jsc"})


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted module name (`lifeseq.<layer>....`) of a source file under `root`, and whether it
    is a package `__init__`."""
    parts = [NAMESPACE, *path.relative_to(root).with_suffix("").parts]
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
    package = module.split(".")[1]
    layer = LAYERS[package]
    banned = BANNED_THIRD_PARTY.get(package, frozenset())
    violations = []
    if module == COMPAT:
        top_level = {
            n.lineno for n in ast.parse(source).body if isinstance(n, ast.Import | ast.ImportFrom)
        }
        lazy = {line for line, _ in imported_modules(source, module, is_package)} - top_level
    else:
        lazy = set()
        violations += private_uses(source, path)
    for line, name in sorted(imported_modules(source, module, is_package)):
        if line in lazy:
            continue
        parts = name.split(".")
        if parts[0] in LAYERS:
            violations.append(
                f"{path}:{line}: imports {name}, the old top-level name; import {NAMESPACE}.{name}"
            )
            continue
        top = parts[1] if parts[0] == NAMESPACE and len(parts) > 1 else parts[0]
        if parts[0] == NAMESPACE and top in LAYERS and LAYERS[top] > layer:
            violations.append(
                f"{path}:{line}: {package} (layer {layer}) imports {name} "
                f"(layer {LAYERS[top]}); imports must flow pipeline → features → models → "
                "trainers → jobs/serving"
            )
        elif top in banned:
            violations.append(f"{path}:{line}: {package} must never import {top} ({name})")
    return violations


def private_uses(source: str, path: str) -> list[str]:
    """Uses of a private third-party API outside `COMPAT`: an import of a third-party module or
    name starting with `_` (`torch._inductor`, `from x import _PATH`), or a known private
    attribute (`PRIVATE_ATTRIBUTES`) of anything but `self`/`cls`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in PRIVATE_ATTRIBUTES
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            names = [f"….{node.attr}"]
        for name in names:
            parts = name.split(".")
            if parts[0] in (NAMESPACE, "__future__", *LAYERS):
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in parts):
                found.append(
                    f"{path}:{node.lineno}: uses the private third-party API {name}; wrap it in "
                    "pipeline/compat.py"
                )
                break
    return found


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

    assert check_source(source, "lifeseq.pipeline.shards", "pipeline/shards.py") == [
        "pipeline/shards.py:5: pipeline must never import torch (torch.nn)"
    ]


def test_checker_flags_upward_first_party_imports() -> None:
    source = (
        "from lifeseq.pipeline import storage\n"
        "from lifeseq.models.hstu import HSTU\n"
        "import lifeseq.trainers.module\n"
        "from lifeseq.features.schema import Schema\n"
    )

    violations = check_source(source, "lifeseq.features.loader", "features/loader.py")

    assert [v.split(": ")[0] for v in violations] == [
        "features/loader.py:2",
        "features/loader.py:3",
    ]
    assert "imports lifeseq.models.hstu (layer 2)" in violations[0]


def test_checker_flags_the_old_top_level_names() -> None:
    source = "from pipeline import storage\nimport models.hstu\nimport modelsx\n"

    violations = check_source(source, "lifeseq.features.loader", "features/loader.py")

    assert violations == [
        "features/loader.py:1: imports pipeline, the old top-level name; import lifeseq.pipeline",
        "features/loader.py:2: imports models.hstu, the old top-level name; import "
        "lifeseq.models.hstu",
    ]


def test_checker_resolves_relative_imports() -> None:
    source = "from . import schema\nfrom .codec import decode\nfrom .. import models\n"

    assert list(imported_modules(source, "lifeseq.features.loader")) == [
        (1, "lifeseq.features.schema"),
        (2, "lifeseq.features.codec"),
        (3, "lifeseq.models"),
    ]
    assert list(imported_modules("from ..pipeline import x\n", "lifeseq.models.gsu.sim")) == [
        (1, "lifeseq.models.pipeline")
    ]
    assert list(
        imported_modules("from .sim import x\n", "lifeseq.models.gsu", is_package=True)
    ) == [(1, "lifeseq.models.gsu.sim")]
    violations = check_source(source, "lifeseq.features.loader", "features/loader.py")
    assert len(violations) == 1 and violations[0].startswith("features/loader.py:3:")


def test_checker_flags_dynamic_imports_and_models_bans() -> None:
    source = (
        "import importlib\n"
        "pl = importlib.import_module('pytorch_lightning')\n"
        "wds = __import__('webdataset')\n"
        "from lightning.pytorch import Trainer\n"
        "import torchrec\n"
    )

    violations = check_source(source, "lifeseq.models.din", "models/din.py")

    assert [v.split(": ")[0] for v in violations] == [
        "models/din.py:2",
        "models/din.py:3",
        "models/din.py:4",
    ]


def test_checker_allows_downward_imports_and_similar_names() -> None:
    source = (
        "import torch\nimport torchvision\nimport lightning\n"
        "from lifeseq.pipeline.sample_codec import decode_members\n"
        "from lifeseq.features import schema\n"
        "from lifeseq.models.hstu import HSTU\nimport lifeseq.serving\n"
    )

    assert check_source(source, "lifeseq.jobs.train", "jobs/train.py") == []
    assert check_source("import torchmetrics\nimport pyspark\n", "lifeseq.pipeline.x", "p.py") == []
    assert check_source("import pipelines\n", "lifeseq.pipeline.x", "p.py") == []


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


def import_cycles(root: Path) -> list[list[str]]:
    """Import cycles among first-party modules under `root` (each as the modules around it,
    the first repeated at the end); imports under `TYPE_CHECKING` count."""
    graph: dict[str, set[str]] = {}
    for path in source_files(root):
        module, is_package = module_name(path, root)
        source = path.read_text(encoding="utf-8")
        graph[module] = {name for _, name in imported_modules(source, module, is_package)}
    for module in graph:  # `from lifeseq.models import ctr` imports the module lifeseq.models.ctr
        graph[module] = {n for n in graph[module] if n in graph and n != module}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycles.append([*stack[stack.index(name) :], name])
            elif name not in state:
                visit(name)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    cycles = import_cycles(REPO_ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_cycle_finder_finds_a_type_checking_cycle(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.py").write_text("from lifeseq.models.b import B\n")
    (tmp_path / "models" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lifeseq.models.a import A\n"
    )
    assert import_cycles(tmp_path) == [["lifeseq.models.a", "lifeseq.models.b", "lifeseq.models.a"]]


def test_private_third_party_apis_only_in_the_compat_module() -> None:
    source = (
        "from torch._higher_order_ops.scan import scan\n"
        "from lightning.fabric.utilities.types import _PATH\n"
        "import torch._inductor\n"
        "w = dmp._env.world_size\n"
        "x = self._optimizer\n"
        "from lifeseq.models import _private\n"
        "from __future__ import annotations\n"
    )
    assert [v.split(": ")[0] for v in private_uses(source, "m.py")] == [
        "m.py:1", "m.py:2", "m.py:3", "m.py:4",
    ]  # fmt: skip
    compat = "def f():\n    import torch\n    return torch._inductor\n"
    assert check_source(compat, COMPAT, "pipeline/compat.py") == []
    assert check_source("import torch\n", COMPAT, "pipeline/compat.py") == [
        "pipeline/compat.py:1: pipeline must never import torch (torch)"
    ]
    assert sorted(check_source(compat, "lifeseq.pipeline.other", "pipeline/other.py")) == [
        "pipeline/other.py:2: pipeline must never import torch (torch)",
        "pipeline/other.py:3: uses the private third-party API …._inductor; wrap it in "
        "pipeline/compat.py",
    ]
