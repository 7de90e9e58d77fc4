"""Two-stage lifelong CTR models: a long-term unit over the whole history window, DIN over the
most recent events, and an MLP tower.

Per target j (item t_j, request time ts_j) of a `CtrBatch`:

    t_j      = [item_emb, category_emb](target)                                  (2D)
    short_j  = DIN(t_j; the window's most recent `short_term_len` behaviors)     (5D)
    long_j   = long-term unit (below)                                            (attention_out)
    logit_j  = MLP([t_j, short_j, long_j])

Behaviors carry item-inherent features `[item_emb, category_emb]` and target-behavior cross
features (behavior type, log2 time gap to ts_j, same category as the target: small dense
tables); see `models.target_attention`. `long_term` selects:

| `long_term` | long-term unit |
|---|---|
| `none`     | nothing: the DIN-N baseline (`short_term_len` = 100: DIN-100) |
| `sim_hard` | SIM hard search (same category, newest first) → ESU over the top K |
| `sim_soft` | SIM soft search (separate GSU embeddings, auxiliary loss) → ESU over the top K |
| `eta`      | ETA SimHash/Hamming search → ESU over the top K |
| `twin`     | TWIN CP-GSU (the ESU's own logits) → the same ESU over the top K |
| `full`     | the ESU over every behavior of the window (chunked online softmax): the reference |

The ESU is `MultiHeadTargetAttention`. Large tables (`item`, `category`, and SIM soft's
`gsu_item` / `gsu_category`) live in the embedding collection (TorchRec-shardable, or plain
torch); the small `behavior` and `time_gap` tables are dense parameters.

Loss: binary cross-entropy over targets (times `batch.weight`), plus `aux_weight` × SIM soft's
auxiliary BCE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from features.batch import CtrBatch
from features.jagged import Jagged
from features.schema import FeatureSchema
from models.embeddings import BACKENDS, EmbeddingTableSpec, build_embeddings
from models.lifelong_inputs import LifelongInputs
from models.search import EtaSearch, SearchResult, SimHardSearch, SimSoftSearch, TwinSearch
from models.seeding import seeded_init
from models.target_attention import DinAttention, MultiHeadTargetAttention
from models.windows import TargetWindows, gather_rows, recent

#: Values of `LifelongCtrConfig.long_term`.
LONG_TERM_UNITS = ("none", "sim_hard", "sim_soft", "eta", "twin", "full")


@dataclass(frozen=True)
class ArchConfig:
    """Architecture settings (YAML `model.init_args.arch`), independent of the data.

    Attributes:
        long_term: the long-term unit, one of `LONG_TERM_UNITS`.
        short_term_len: behaviors DIN attends to (the most recent of each window).
        top_k: behaviors a GSU retrieves for the ESU.
        chunk: window events scored per target per step (memory: T × chunk × width).
        heads: ESU heads.
        head_dim: ESU width per head.
        attention_out: ESU output width.
        din_hidden: hidden widths of DIN's activation unit.
        tower_hidden: hidden widths of the tower MLP.
        eta_bits: ETA signature bits.
        sim_soft_dim: SIM soft projection width.
        aux_weight: weight of SIM soft's auxiliary loss.
    """

    long_term: str = "twin"
    short_term_len: int = 100
    top_k: int = 64
    chunk: int = 1024
    heads: int = 4
    head_dim: int = 16
    attention_out: int = 64
    din_hidden: tuple[int, ...] = (64, 32)
    tower_hidden: tuple[int, ...] = (128, 64)
    eta_bits: int = 64
    sim_soft_dim: int = 32
    aux_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.long_term not in LONG_TERM_UNITS:
            raise ValueError(
                f"arch.long_term: expected one of {list(LONG_TERM_UNITS)}, got {self.long_term!r}"
            )
        for name in (
            "short_term_len", "top_k", "chunk", "heads", "head_dim", "attention_out", "eta_bits",
            "sim_soft_dim",
        ):  # fmt: skip
            _check_positive(f"arch.{name}", getattr(self, name))
        if self.aux_weight < 0:
            raise ValueError(f"arch.aux_weight: expected >= 0, got {self.aux_weight}")
        for name in ("din_hidden", "tower_hidden"):
            widths = tuple(getattr(self, name))
            for width in widths:
                _check_positive(f"arch.{name}", width)
            object.__setattr__(self, name, widths)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


@dataclass(frozen=True)
class LifelongCtrConfig:
    """Configuration of `LifelongCtrModel`: table sizes (from the feature schema) + `arch`.

    Attributes:
        item_rows: rows of the item table (vocab size incl. padding).
        category_rows: rows of the category table.
        behavior_rows: rows of the behavior table.
        gap_buckets: time-gap buckets (`FeatureConfig.time_gap_buckets`).
        embedding_dim: D, width of every embedding.
        arch: architecture settings.
        backend: embedding backend (`torchrec` or `torch`).
        seed: initialisation seed.
    """

    item_rows: int
    category_rows: int
    behavior_rows: int
    gap_buckets: int
    embedding_dim: int = 16
    arch: ArchConfig = field(default_factory=ArchConfig)
    backend: str = "torchrec"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("item_rows", "category_rows", "behavior_rows", "gap_buckets", "embedding_dim"):
            _check_positive(name, getattr(self, name))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {self.backend!r}")

    @staticmethod
    def from_schema(
        schema: FeatureSchema, arch: ArchConfig, backend: str = "torchrec", seed: int = 0
    ) -> LifelongCtrConfig:
        """Table sizes and width from the run's feature schema."""
        return LifelongCtrConfig(
            item_rows=schema.tables["item"].num_embeddings,
            category_rows=schema.tables["category"].num_embeddings,
            behavior_rows=schema.tables["behavior"].num_embeddings,
            gap_buckets=schema.config.time_gap_buckets,
            embedding_dim=schema.config.embedding_dim,
            arch=arch,
            backend=backend,
            seed=seed,
        )

    def tables(self) -> list[EmbeddingTableSpec]:
        """The embedding-collection tables (history and target features share a table)."""
        d = self.embedding_dim
        names = ["item", "category"] + (
            ["gsu_item", "gsu_category"] if self.arch.long_term == "sim_soft" else []
        )
        rows = {"item": self.item_rows, "category": self.category_rows}
        specs = []
        for name in names:
            base = name.removeprefix("gsu_")
            prefix = "gsu_" if name.startswith("gsu_") else ""
            features = (f"{prefix}history_{base}", f"{prefix}target_{base}")
            specs.append(EmbeddingTableSpec(name, rows[base], d, features))
        return specs


@dataclass
class CtrOutput:
    """Model output: (T,) logits and, for SIM soft, (T,) auxiliary logits."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None


def _mlp(width: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class LifelongCtrUnits(nn.Module):
    """The dense units of a lifelong CTR model (DIN, GSU, ESU, tower) over embedded inputs.

    Shared by `LifelongCtrModel` (training, batches of users) and `models.ctr_request`
    (one serving request, `torch.export`ed): both score `LifelongInputs` with the same code.
    Subclasses set `config`, `din`, `attention`, `search` and `tower`.
    """

    config: LifelongCtrConfig
    din: DinAttention
    attention: MultiHeadTargetAttention | None
    search: nn.Module | None
    tower: nn.Sequential

    def short_term(self, inputs: LifelongInputs) -> torch.Tensor:
        """(T, 4D) DIN pooling of each window's most recent `short_term_len` behaviors."""
        index, valid = recent(inputs.windows, self.config.arch.short_term_len)
        cross = inputs.pair_features(inputs.all_rows(), index)
        keys = gather_rows(inputs.event_inherent, index)
        return self.din(inputs.target_inherent, keys, cross.cat(), valid)

    def retrieve(
        self, inputs: LifelongInputs, event_keys: torch.Tensor, query: torch.Tensor,
        gsu: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> SearchResult:  # fmt: skip
        """The GSU's top-K behaviors of every target (`gsu`: SIM soft's (N, 2D) event and
        (T, 2D) target GSU embeddings)."""
        search = self.search
        if isinstance(search, TwinSearch):
            assert self.attention is not None
            return search(inputs, self.attention, event_keys, query)
        if isinstance(search, SimSoftSearch):
            assert gsu is not None, "sim_soft needs the GSU embeddings"
            return search(inputs, *gsu)
        assert search is not None
        return search(inputs)

    def long_term(
        self,
        inputs: LifelongInputs,
        gsu: tuple[torch.Tensor, torch.Tensor] | None,
        event_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(T, attention_out) long-term representation (None for `none`) and aux logits.

        `event_keys` (N, H, dh): the ESU keys of the events when already known (TWIN's per-item
        cache at serving time); computed from `inputs.event_inherent` otherwise.
        """
        attention = self.attention
        if attention is None:
            return None, None
        query = attention.query(inputs.target_inherent)  # (T, H, dh)
        if event_keys is None:
            event_keys = attention.keys(inputs.event_inherent)  # (N, H, dh): the item cache
        if self.config.arch.long_term == "full":
            return attention.attend_windows(query, event_keys, inputs, self.config.arch.chunk), None
        found = self.retrieve(inputs, event_keys, query, gsu)
        index = found.index
        cross = inputs.pair_features(inputs.all_rows(), index)
        out = attention.attend(
            query, gather_rows(event_keys, index), gather_rows(inputs.event_inherent, index),
            cross, found.valid,
        )  # fmt: skip
        return out, found.aux_logits

    def score(
        self,
        inputs: LifelongInputs,
        gsu: tuple[torch.Tensor, torch.Tensor] | None = None,
        event_keys: torch.Tensor | None = None,
    ) -> CtrOutput:
        """Logits of the targets of embedded `inputs` (see `long_term` for `gsu`, `event_keys`)."""
        parts = [inputs.target_inherent, self.short_term(inputs)]
        long_out, aux = self.long_term(inputs, gsu, event_keys)
        if long_out is not None:
            parts.append(long_out)
        logits = self.tower(torch.cat(parts, dim=1)).squeeze(1)
        return CtrOutput(logits, aux)


class LifelongCtrModel(LifelongCtrUnits):
    """See the module docstring.

    Args:
        config: the model configuration.
    """

    def __init__(self, config: LifelongCtrConfig) -> None:
        super().__init__()
        self.config = config
        d, arch = config.embedding_dim, config.arch
        self.embeddings = build_embeddings(
            config.tables(), backend=config.backend, seed=config.seed
        )
        with seeded_init(config.seed):
            self.behavior_embedding = nn.Embedding(config.behavior_rows, d)
            self.gap_embedding = nn.Embedding(config.gap_buckets, d)
            self.match_embedding = nn.Embedding(2, d)
            for table in (self.behavior_embedding, self.gap_embedding, self.match_embedding):
                nn.init.normal_(table.weight, std=0.02)
            self.din = DinAttention(key_dim=2 * d, side_dim=3 * d, hidden=arch.din_hidden)
            long_width = 0
            self.attention: MultiHeadTargetAttention | None = None
            if arch.long_term != "none":
                self.attention = MultiHeadTargetAttention(
                    target_dim=2 * d, inherent_dim=2 * d, cross_dim=3 * d, heads=arch.heads,
                    head_dim=arch.head_dim, out_dim=arch.attention_out,
                )  # fmt: skip
                long_width = arch.attention_out
            k, chunk = arch.top_k, arch.chunk
            self.search: nn.Module | None = {
                "sim_hard": lambda: SimHardSearch(k, chunk),
                "sim_soft": lambda: SimSoftSearch(2 * d, arch.sim_soft_dim, k, chunk),
                "eta": lambda: EtaSearch(2 * d, arch.eta_bits, k, chunk, seed=config.seed),
                "twin": lambda: TwinSearch(k, chunk),
            }.get(arch.long_term, lambda: None)()
            self.tower = _mlp(2 * d + self.din.out_dim + long_width, arch.tower_hidden)

    # --- inputs ---------------------------------------------------------------------------

    def embed(self, batch: CtrBatch) -> tuple[LifelongInputs, dict[str, Jagged]]:
        """Look up the batch's embeddings; returns the inputs and the raw lookup output."""
        history = batch.history
        ones = torch.ones_like(batch.target_item)
        features = {
            "history_item": history["item"],
            "history_category": history["category"],
            "target_item": Jagged(batch.target_item, ones),
            "target_category": Jagged(batch.target_category, ones),
        }
        if self.config.arch.long_term == "sim_soft":
            features |= {
                "gsu_history_item": history["item"],
                "gsu_history_category": history["category"],
                "gsu_target_item": features["target_item"],
                "gsu_target_category": features["target_category"],
            }
        out = self.embeddings(features)
        inputs = LifelongInputs(
            windows=TargetWindows.from_batch(batch),
            event_item=history["item"].values,
            event_category=history["category"].values,
            event_behavior_id=history["behavior"].values,
            event_ts=history["ts"].values,
            event_inherent=torch.cat(
                [out["history_item"].values, out["history_category"].values], dim=1
            ),
            event_behavior=self.behavior_embedding(history["behavior"].values),
            target_item=batch.target_item,
            target_category=batch.target_category,
            target_ts=batch.target_ts,
            target_inherent=torch.cat(
                [out["target_item"].values, out["target_category"].values], dim=1
            ),
            gap_embedding=self.gap_embedding,
            match_embedding=self.match_embedding,
        )
        return inputs, out

    def item_key_cache(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """TWIN's serving cache: the ESU keys of items, which depend on the item alone.

        Args:
            items: (M,) item ids.
            categories: (M,) their category ids (an item's category is fixed).

        Returns:
            (M, H, dh) keys, equal to the keys `forward` computes for those items' behaviors.

        Raises:
            ValueError: the model has no ESU (`long_term: none`).
        """
        if self.attention is None:
            raise ValueError("item_key_cache: long_term 'none' has no target attention")
        ones = torch.ones_like(items)
        out = self.embeddings(
            {"target_item": Jagged(items, ones), "target_category": Jagged(categories, ones)}
        )
        return self.item_keys(out["target_item"].values, out["target_category"].values)

    def item_keys(self, item_rows: torch.Tensor, category_rows: torch.Tensor) -> torch.Tensor:
        """(M, H, dh) ESU keys of items from their (M, D) item and category embedding rows
        (`item_key_cache` without the lookup; export reads the rows from checkpoint shards)."""
        assert self.attention is not None, "item_keys: long_term 'none' has no target attention"
        return self.attention.keys(torch.cat([item_rows, category_rows], dim=1))

    # --- forward / loss -------------------------------------------------------------------

    def forward(self, batch: CtrBatch) -> CtrOutput:
        """Logits of every target of the batch.

        Args:
            batch: B users, N history events, T targets (T = 0 for a padding batch).

        Returns:
            `CtrOutput` with (T,) logits (and SIM soft's (T,) auxiliary logits).
        """
        inputs, lookups = self.embed(batch)
        return self.score(inputs, self.gsu_embeddings(lookups))

    def gsu_embeddings(
        self, lookups: dict[str, Jagged]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """SIM soft's (N, 2D) event and (T, 2D) target GSU embeddings from `embed`'s lookups;
        None for the other units."""
        if self.config.arch.long_term != "sim_soft":
            return None
        events = [lookups["gsu_history_item"].values, lookups["gsu_history_category"].values]
        targets = [lookups["gsu_target_item"].values, lookups["gsu_target_category"].values]
        return torch.cat(events, 1), torch.cat(targets, 1)

    def loss(self, output: CtrOutput, batch: CtrBatch) -> torch.Tensor:
        """BCE over targets (+ `aux_weight` × auxiliary BCE), times `batch.weight`; finite (0)
        on a padding batch. Returns a scalar."""
        total = _bce(output.logits, batch)
        if output.aux_logits is not None:
            total = total + self.config.arch.aux_weight * _bce(output.aux_logits, batch)
        return total


def _bce(logits: torch.Tensor, batch: CtrBatch) -> torch.Tensor:
    per_target = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), batch.label, reduction="none"
    )
    return batch.weight * per_target.sum() / max(batch.num_targets, 1)
