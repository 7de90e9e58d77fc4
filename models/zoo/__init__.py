"""The model zoo: one file per model, found by `discover` (no hand-written list).

* `models.zoo.sequence` — `SequenceEncoder`s (HSTU, SASRec, ...), trained by the
  next-item (causal) or masked-item (bidirectional) task inside
  `models.sequential.SequentialRecommender`.
* `models.zoo.long_term` — `LongTermUnit`s of lifelong CTR (SIM hard/soft, ETA, TWIN, full
  attention), plugged into `models.zoo.ctr.lifelong.LifelongCtr`.
* `models.zoo.ctr` — whole `CtrModel`s (the smoke model, `LifelongCtr`).

Adding a model: its file here, its config under `configs/`, a README row (see the README's
"Adding a model").
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TypeVar

_T = TypeVar("_T")


def discover(interface: type[_T]) -> list[type[_T]]:
    """Every concrete subclass of `interface` defined in a module of `models.zoo`, sorted by
    class path (importing each module once)."""
    found: dict[str, type[_T]] = {}
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == module.__name__
                and issubclass(cls, interface)
                and cls is not interface
                and not inspect.isabstract(cls)
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


def choices(interface: type) -> list[str]:
    """The class paths YAML may name for `interface`: the zoo's implementations, and for
    `InputFeatures` the blocks in `models.blocks.input_features`."""
    from lifeseq.models.blocks import input_features
    from lifeseq.models.interfaces import InputFeatures

    found = [f"{c.__module__}.{c.__qualname__}" for c in discover(interface)]
    if interface is InputFeatures:
        found += [
            f"{c.__module__}.{c.__qualname__}"
            for _, c in inspect.getmembers(input_features, inspect.isclass)
            if issubclass(c, InputFeatures) and c is not InputFeatures
        ]
    return sorted(found)
