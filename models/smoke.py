"""Smoke CTR model: mean-pooled history prefix + target embedding → MLP → logit.

The smallest model that exercises the whole training platform (issue 3): embedding tables from
the `FeatureSchema` on either embedding backend, user-grouped jagged CTR batches, a dense part
for DDP. Real models (issues 4, 5) replace it without changing the platform.

Per batch of B users (N history events in all) and T targets:

    e_n  = item_emb(history_item[n]) + category_emb(history_category[n])   # (N, D), once per user
    h_j  = mean(e over the first target_hist_len[j] events of user target_user[j])  # (T, D)
    t_j  = item_emb(target_item[j]) + category_emb(target_category[j])      # (T, D)
    logit_j = MLP([h_j, t_j, h_j * t_j])                                    # (T,)

Each target pools its own prefix of its user's row through a prefix sum over the row (O(N + T),
no (T, L, D) copy). A target with an empty prefix gets h_j = 0.

Example:
    cfg = SmokeConfig.from_schema(schema, hidden=(32,), backend="torch", seed=0)
    model = SmokeCtrModel(cfg)
    logits = model(batch)             # (T,)
    loss = model.loss(logits, batch)  # finite and 0 on a padding batch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from features.batch import CtrBatch
from features.jagged import Jagged
from features.schema import FeatureSchema
from models.embeddings import BACKENDS, EmbeddingTableSpec, build_embeddings
from models.seeding import seeded_init

#: Features the smoke model looks up, by table.
SMOKE_FEATURES: dict[str, tuple[str, ...]] = {
    "item": ("history_item", "target_item"),
    "category": ("history_category", "target_category"),
}


@dataclass(frozen=True)
class SmokeConfig:
    """Configuration of `SmokeCtrModel`.

    Attributes:
        item_rows: rows of the `item` table (vocab size, padding id 0 included).
        category_rows: rows of the `category` table.
        embedding_dim: width D of both tables.
        hidden: widths of the MLP's hidden layers (ReLU); may be empty (a linear model).
        backend: embedding backend, `torchrec` or `torch` (see `models.embeddings`).
        seed: seed of the embedding and MLP initialisation (same weights on every rank).
    """

    item_rows: int
    category_rows: int
    embedding_dim: int = 16
    hidden: tuple[int, ...] = (32,)
    backend: str = "torchrec"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("item_rows", "category_rows", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SmokeConfig.{name}: expected a positive int, got {value!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"SmokeConfig.hidden: expected positive ints, got {self.hidden!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"SmokeConfig.backend: expected one of {list(BACKENDS)}, got {self.backend!r}"
            )

    @staticmethod
    def from_schema(
        schema: FeatureSchema,
        hidden: tuple[int, ...] = (32,),
        backend: str = "torchrec",
        seed: int = 0,
    ) -> SmokeConfig:
        """Table sizes and width from the run's feature schema."""
        return SmokeConfig(
            item_rows=schema.tables["item"].num_embeddings,
            category_rows=schema.tables["category"].num_embeddings,
            embedding_dim=schema.config.embedding_dim,
            hidden=tuple(hidden),
            backend=backend,
            seed=seed,
        )

    def tables(self) -> list[EmbeddingTableSpec]:
        """The embedding tables (history and target features share one table per id space)."""
        rows = {"item": self.item_rows, "category": self.category_rows}
        return [
            EmbeddingTableSpec(name, rows[name], self.embedding_dim, features)
            for name, features in SMOKE_FEATURES.items()
        ]


def prefix_mean(
    events: Jagged,
    target_user: torch.Tensor,
    hist_len: torch.Tensor,
    hist_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of each target's history window, from one shared row per user.

    Args:
        events: Jagged with B rows, values (N, D) float.
        target_user: (T,) int64 row of each target.
        hist_len: (T,) int64 end of each target's window, in [0, lengths[target_user]].
        hist_start: (T,) int64 start of each window (the `max_history` cap); None: 0.

    Returns:
        (T, D): mean of `row[hist_start[j]:hist_len[j]]`, zeros for an empty window.
    """
    values = events.values  # (N, D)
    csum = torch.cat([values.new_zeros(1, values.shape[1]), values.cumsum(0)])  # (N + 1, D)
    row = events.offsets[:-1][target_user]  # (T,)
    lo = row if hist_start is None else row + hist_start  # (T,)
    total = csum[row + hist_len] - csum[lo]  # (T, D)
    count = (row + hist_len - lo).clamp(min=1).unsqueeze(1).to(values.dtype)  # (T, 1)
    return total / count  # (T, D)


class SmokeCtrModel(nn.Module):
    """Mean-pooled history + target MLP; see the module docstring.

    Args:
        config: the model configuration.
    """

    config: SmokeConfig

    def __init__(self, config: SmokeConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = build_embeddings(
            config.tables(), backend=config.backend, seed=config.seed
        )
        with seeded_init(config.seed):
            layers: list[nn.Module] = []
            width = 3 * config.embedding_dim
            for hidden in config.hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            layers.append(nn.Linear(width, 1))
            self.mlp = nn.Sequential(*layers)

    def forward(self, batch: CtrBatch) -> torch.Tensor:
        """Logits of every target.

        Args:
            batch: B users, N history events, T targets (a padding batch gives T = 0).

        Returns:
            (T,) float logits.
        """
        history = batch.history
        ones = torch.ones_like(batch.target_item)  # (T,) one id per target row
        out = self.embeddings(
            {
                "history_item": history["item"],
                "history_category": history["category"],
                "target_item": Jagged(batch.target_item, ones),
                "target_category": Jagged(batch.target_category, ones),
            }
        )
        events = Jagged(
            out["history_item"].values + out["history_category"].values,  # (N, D)
            history["item"].lengths,
        )
        pooled = prefix_mean(  # (T, D)
            events, batch.target_user, batch.target_hist_len, batch.target_hist_start
        )
        target = out["target_item"].values + out["target_category"].values  # (T, D)
        features = torch.cat([pooled, target, pooled * target], dim=1)  # (T, 3D)
        return self.mlp(features).squeeze(1)  # (T,)

    @staticmethod
    def loss(logits: torch.Tensor, batch: CtrBatch) -> torch.Tensor:
        """Binary cross-entropy, mean over targets, times `batch.weight`.

        `weight * sum / max(T, 1)`: finite (0) on a padding batch, where a mean would be NaN.

        Returns:
            scalar tensor.
        """
        per_target = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), batch.label, reduction="none"
        )  # (T,)
        return batch.weight * per_target.sum() / max(batch.num_targets, 1)
