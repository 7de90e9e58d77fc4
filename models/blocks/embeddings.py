"""Sequence embedding tables with two interchangeable backends: TorchRec and plain torch.

Both backends map `dict[str, Jagged]` of int64 ids to `dict[str, Jagged]` of embeddings with
the same lengths (TorchRec `EmbeddingCollection` semantics: one vector per id, no pooling):

    ids     Jagged(values (N,) int64,  lengths (B,))
    output  Jagged(values (N, D) float, lengths (B,))   D = the feature's table's embedding_dim

One table may serve several features (history `item` and `target_item` share table `item`), and
features of one call may have different batch sizes B (users vs. targets).

Padding: id 0 (`PADDING_ID`) exists in every table and always embeds to a zero vector that
receives no gradient, in both backends (an output mask, not `nn.Embedding(padding_idx=0)`, so
the two backends agree whatever row 0 holds).

Backends (`build_embeddings(..., backend=...)`, YAML `embedding.backend`):

* `"torchrec"` (`TorchRecEmbeddingCollection`): `torchrec.EmbeddingCollection` per embedding
  dimension; `DistributedModelParallel` shards these inner collections (see
  `trainers/sharding.py`). Needs torchrec + fbgemm-gpu, imported lazily here.
* `"torch"` (`TorchEmbeddingCollection`): one `nn.Embedding` per table; no torchrec needed
  (our GPU test machine); data-parallel only.

Both keep their tables under the same state-dict keys,
`collections.d{D}.embeddings.{table}.weight`, so a full (unsharded) state dict moves between
backends with `load_state_dict`; `copy_weights(src, dst)` does the same explicitly.

Example::

    tables = [EmbeddingTableSpec("item", 1000, 32, ("item", "target_item"))]
    emb = build_embeddings(tables, backend="torch", seed=0)
    out = emb({"item": Jagged(ids, lengths)})["item"]  # values (N, 32)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifeseq.features.jagged import Jagged

logger = logging.getLogger(__name__)

#: Id reserved for padding in every table (vocab id 0, see DESIGN.md); embeds to zeros.
PADDING_ID = 0
#: Standard deviation of the normal initialisation of every table row (row 0 is zero).
DEFAULT_INIT_STD = 0.02
#: Accepted values of `build_embeddings(backend=...)` / YAML `embedding.backend`.
BACKENDS = ("torchrec", "torch")


@dataclass(frozen=True)
class EmbeddingTableSpec:
    """One embedding table and the id features it serves.

    Attributes:
        name: table name; also the parameter name under `embeddings.` and the key of sharding
            constraints. Must not contain `.`.
        num_embeddings: rows, including padding id 0 (so at least 1).
        embedding_dim: columns D.
        feature_names: features looked up in this table, e.g. `("item", "target_item")`.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(
                f"EmbeddingTableSpec.name: expected a non-empty string without '.', "
                f"got {self.name!r}"
            )
        if isinstance(self.feature_names, str) or not isinstance(self.feature_names, Iterable):
            raise ValueError(
                f"table {self.name!r}: feature_names must be a sequence of strings, "
                f"got {self.feature_names!r}"
            )
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        for field_name in ("num_embeddings", "embedding_dim"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"table {self.name!r}: {field_name} must be a positive int, got {value!r}"
                )
        if not self.feature_names:
            raise ValueError(f"table {self.name!r}: feature_names is empty")
        bad = [f for f in self.feature_names if not isinstance(f, str) or not f]
        if bad:
            raise ValueError(f"table {self.name!r}: feature names must be non-empty strings: {bad}")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(
                f"table {self.name!r}: duplicate feature names in {list(self.feature_names)}"
            )


def feature_to_table(tables: Sequence[EmbeddingTableSpec]) -> dict[str, EmbeddingTableSpec]:
    """Map every feature to the table serving it, checking the tables are consistent.

    Raises:
        ValueError: no tables, a duplicate table name, or a feature served by two tables.
    """
    if not tables:
        raise ValueError("embedding tables: expected at least one EmbeddingTableSpec, got none")
    names: set[str] = set()
    owner: dict[str, EmbeddingTableSpec] = {}
    for table in tables:
        if not isinstance(table, EmbeddingTableSpec):
            raise ValueError(f"embedding tables: expected EmbeddingTableSpec, got {table!r}")
        if table.name in names:
            raise ValueError(f"embedding tables: duplicate table name {table.name!r}")
        names.add(table.name)
        for feature in table.feature_names:
            if feature in owner:
                raise ValueError(
                    f"feature {feature!r} is served by two tables: "
                    f"{owner[feature].name!r} and {table.name!r}"
                )
            owner[feature] = table
    return owner


def _group_key(embedding_dim: int) -> str:
    return f"d{embedding_dim}"


@torch.no_grad()
def _init_table_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """Normal(0, DEFAULT_INIT_STD) rows, row `PADDING_ID` zero; deterministic given `generator`."""
    if weight.device.type == "meta":
        return
    values = torch.randn(weight.shape, generator=generator, dtype=torch.float32, device="cpu")
    values.mul_(DEFAULT_INIT_STD)
    values[PADDING_ID].zero_()
    weight.copy_(values)


def _mask_padding(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Zero the rows of `embeddings` (N, D) whose id (N,) is `PADDING_ID` (no gradient flows)."""
    keep = (ids != PADDING_ID).unsqueeze(-1).to(embeddings.dtype)  # (N, 1)
    return embeddings * keep  # (N, D)


class _EmbeddingCollectionBase(nn.Module):
    """Shared bookkeeping: table specs, feature lookup and input checks."""

    _tables: tuple[EmbeddingTableSpec, ...]
    _feature_to_table: dict[str, EmbeddingTableSpec]

    def __init__(self, tables: Sequence[EmbeddingTableSpec]) -> None:
        super().__init__()
        self._feature_to_table = feature_to_table(tables)
        self._tables = tuple(tables)

    @property
    def tables(self) -> tuple[EmbeddingTableSpec, ...]:
        """The table specs, in construction order."""
        return self._tables

    @property
    def feature_names(self) -> list[str]:
        """Every feature served, in table order."""
        return [f for t in self._tables for f in t.feature_names]

    def table_of(self, feature: str) -> EmbeddingTableSpec:
        """The table serving `feature`.

        Raises:
            ValueError: no table serves `feature`.
        """
        try:
            return self._feature_to_table[feature]
        except KeyError:
            served = {t.name: list(t.feature_names) for t in self._tables}
            raise ValueError(
                f"feature {feature!r} has no embedding table; tables and their features: {served}"
            ) from None

    def embedding_dim(self, feature: str) -> int:
        """Output dimension D of `feature`."""
        return self.table_of(feature).embedding_dim

    def _check_inputs(self, features: Mapping[str, Jagged]) -> None:
        for feature, jagged in features.items():
            self.table_of(feature)
            if not isinstance(jagged, Jagged):
                raise ValueError(
                    f"feature {feature!r}: expected a features.jagged.Jagged, got {type(jagged)}"
                )
            if jagged.values.dim() != 1 or jagged.values.is_floating_point():
                raise ValueError(
                    f"feature {feature!r}: expected 1-D integer ids, got values of dtype "
                    f"{jagged.values.dtype} and shape {tuple(jagged.values.shape)}"
                )

    def _initialize(self, seed: int | None) -> None:
        """Initialize every table (the same values on both backends for the same seed)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for table in self._tables:
            _init_table_(self._weight(table), generator)

    def _weight(self, table: EmbeddingTableSpec) -> torch.Tensor:
        group = self.collections[_group_key(table.embedding_dim)]  # type: ignore[index]
        return group.embeddings[table.name].weight

    def table_weights(self) -> dict[str, torch.Tensor]:
        """Full weights of every table, `{table: (num_embeddings, D)}` (detached views).

        Only meaningful before sharding; for a sharded model use `trainers.sharding`.
        """
        return {t.name: self._weight(t).detach() for t in self._tables}

    @torch.no_grad()
    def load_table_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy `{table: (num_embeddings, D)}` into the tables (all tables must be given).

        Raises:
            ValueError: a table missing from `weights`, an unknown table, or a shape mismatch.
        """
        names = {t.name for t in self._tables}
        missing, unknown = names - set(weights), set(weights) - names
        if missing or unknown:
            raise ValueError(
                f"load_table_weights: missing tables {sorted(missing)}, "
                f"unknown tables {sorted(unknown)}"
            )
        for table in self._tables:
            dst, src = self._weight(table), weights[table.name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"table {table.name!r}: weight shape {tuple(src.shape)} != "
                    f"expected {tuple(dst.shape)}"
                )
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

    def forward(self, features: Mapping[str, Jagged]) -> dict[str, Jagged]:  # pragma: no cover
        raise NotImplementedError


class _TorchTables(nn.Module):
    """Holds `embeddings.{table}` as `nn.Embedding`s (mirrors torchrec's module layout)."""

    def __init__(
        self, tables: Sequence[EmbeddingTableSpec], device: torch.device | str | None
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict(
            {t.name: nn.Embedding(t.num_embeddings, t.embedding_dim, device=device) for t in tables}
        )


def _groups(tables: Sequence[EmbeddingTableSpec]) -> dict[str, list[EmbeddingTableSpec]]:
    groups: dict[str, list[EmbeddingTableSpec]] = {}
    for table in tables:
        groups.setdefault(_group_key(table.embedding_dim), []).append(table)
    return groups


class TorchEmbeddingCollection(_EmbeddingCollectionBase):
    """Plain `nn.Embedding` per table; the same interface and state-dict keys as TorchRec's.

    Args:
        tables: the tables (each serving one or more features).
        seed: seed of the weight initialisation (None: torch's global RNG).
        device: where to allocate the tables.
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingTableSpec],
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(tables)
        self.collections = nn.ModuleDict(
            {key: _TorchTables(group, device) for key, group in _groups(tables).items()}
        )
        self._initialize(seed)

    def forward(self, features: Mapping[str, Jagged]) -> dict[str, Jagged]:
        """Embed every id.

        Args:
            features: `{feature: Jagged(values (N_f,) int64, lengths (B_f,))}`; any subset of
                `feature_names`, batch sizes may differ between features.

        Returns:
            `{feature: Jagged(values (N_f, D_f), lengths (B_f,))}`, same keys as `features`.

        Raises:
            ValueError: a feature no table serves, or values that are not 1-D integer ids.
        """
        self._check_inputs(features)
        out: dict[str, Jagged] = {}
        for feature, jagged in features.items():
            table = self._feature_to_table[feature]
            module = self.collections[_group_key(table.embedding_dim)].embeddings[table.name]
            embedded = module(jagged.values)  # (N, D)
            out[feature] = Jagged(_mask_padding(embedded, jagged.values), jagged.lengths)
        return out


class TorchRecEmbeddingCollection(_EmbeddingCollectionBase):
    """`torchrec.EmbeddingCollection` behind the `dict[str, Jagged]` interface.

    Tables are grouped by embedding dimension into one `EmbeddingCollection` each (TorchRec
    requires one dimension per collection), held in `self.collections[f"d{D}"]`. Those inner
    collections are what `DistributedModelParallel` shards; this wrapper only converts
    `Jagged` ↔ `KeyedJaggedTensor`/`JaggedTensor` and so works unchanged after sharding.

    Features absent from a call are sent as empty rows (a sharded collection needs every
    feature it was planned with, and every rank must call every collection) and left out of the
    output; features with fewer rows than the largest batch are padded with empty rows, which
    produce no embeddings. Ranks may use different batch sizes.

    Args:
        tables: the tables (each serving one or more features).
        seed: seed of the weight initialisation (None: torch's global RNG); with the same seed
            the weights equal `TorchEmbeddingCollection`'s.
        device: where to allocate the tables; `"meta"` defers allocation to sharding.

    Raises:
        ImportError: torchrec is not importable.
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingTableSpec],
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(tables)
        torchrec = _import_torchrec()
        device = torch.device(device) if device is not None else None
        self.collections = nn.ModuleDict()
        self._group_features: dict[str, list[str]] = {}
        for key, group in _groups(tables).items():
            configs = [
                torchrec.EmbeddingConfig(
                    name=t.name,
                    num_embeddings=t.num_embeddings,
                    embedding_dim=t.embedding_dim,
                    feature_names=list(t.feature_names),
                )
                for t in group
            ]
            self.collections[key] = torchrec.EmbeddingCollection(tables=configs, device=device)
            self._group_features[key] = [f for t in group for f in t.feature_names]
        self._initialize(seed)

    def forward(self, features: Mapping[str, Jagged]) -> dict[str, Jagged]:
        """Embed every id.

        Args:
            features: `{feature: Jagged(values (N_f,) int64, lengths (B_f,))}`; any subset of
                `feature_names`, batch sizes may differ between features.

        Returns:
            `{feature: Jagged(values (N_f, D_f), lengths (B_f,))}`, same keys as `features`
            (`{}` for `{}` without running the collections: once sharded, never pass `{}` on
            only some ranks).

        Raises:
            ValueError: a feature no table serves, or values that are not 1-D integer ids.
        """
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        self._check_inputs(features)
        if not features:
            return {}
        first = next(iter(features.values()))
        device, lengths_dtype = first.values.device, first.lengths.dtype
        # At least one row: KeyedJaggedTensor fails on stride 0, which a padding batch
        # (no users, no targets) would give; the extra empty row produces no embeddings.
        stride = max(1, max(j.batch_size for j in features.values()))
        out: dict[str, Jagged] = {}
        for key, names in self._group_features.items():
            # Every collection runs on every call, even with no feature present: once sharded,
            # each call is a collective that all ranks must enter.
            values, lengths = [], []
            for name in names:
                jagged = features.get(name)
                if jagged is None:
                    values.append(torch.empty(0, dtype=torch.int64, device=device))
                    lengths.append(torch.zeros(stride, dtype=lengths_dtype, device=device))
                    continue
                values.append(jagged.values.to(torch.int64))
                pad = jagged.lengths.new_zeros(stride - jagged.batch_size)
                lengths.append(torch.cat([jagged.lengths.to(lengths_dtype), pad]))
            kjt = KeyedJaggedTensor(
                keys=names, values=torch.cat(values), lengths=torch.cat(lengths), stride=stride
            )
            result = self.collections[key](kjt)
            if hasattr(result, "wait"):  # a sharded collection may return a LazyAwaitable
                result = result.wait()
            for name in names:
                if name in features:
                    ids = features[name]
                    embedded = result[name].values()  # (N_f, D)
                    out[name] = Jagged(_mask_padding(embedded, ids.values), ids.lengths)
        return {name: out[name] for name in features}


def _import_torchrec() -> Any:
    try:
        import torchrec
    except ImportError as err:  # torchrec missing, or fbgemm-gpu kernels failing to load
        raise ImportError(
            f"embedding backend 'torchrec' needs torchrec and fbgemm-gpu, but importing torchrec "
            f"failed ({err}); install torchrec (see requirements/torchrec.txt) or set "
            f"`embedding.backend: torch`"
        ) from err
    return torchrec


def torchrec_available() -> bool:
    """Whether the torchrec backend can be built here (torchrec and fbgemm importable)."""
    try:
        _import_torchrec()
    except ImportError:
        return False
    return True


EmbeddingCollectionModule = TorchEmbeddingCollection | TorchRecEmbeddingCollection


def build_embeddings(
    tables: Sequence[EmbeddingTableSpec],
    backend: str = "torchrec",
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> EmbeddingCollectionModule:
    """Build the embedding tables on the chosen backend.

    Args:
        tables: table specs.
        backend: `"torchrec"` (shardable by DistributedModelParallel) or `"torch"`
            (plain `nn.Embedding`, no torchrec needed).
        seed: weight-initialisation seed; the same seed gives the same weights on both
            backends (and on every rank).
        device: where to allocate the tables (`"meta"` for torchrec defers to sharding).

    Returns:
        A module mapping `dict[str, Jagged]` ids to `dict[str, Jagged]` embeddings.

    Raises:
        ValueError: unknown backend or inconsistent tables.
        ImportError: backend "torchrec" without an importable torchrec.
    """
    if backend == "torchrec":
        return TorchRecEmbeddingCollection(tables, seed=seed, device=device)
    if backend == "torch":
        return TorchEmbeddingCollection(tables, seed=seed, device=device)
    raise ValueError(f"embedding.backend: expected one of {list(BACKENDS)}, got {backend!r}")


def copy_weights(src: _EmbeddingCollectionBase, dst: _EmbeddingCollectionBase) -> None:
    """Give `dst` the table weights of `src` (either backend, unsharded).

    Raises:
        ValueError: the two modules do not have the same tables and shapes.
    """
    dst.load_table_weights(src.table_weights())
