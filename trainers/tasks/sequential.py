"""What the sequential tasks share: the softmax loss over sampled (or all) items and
full-ranking evaluation.

`SequentialTask` is the base of `NextItemModule` and `MaskedItemModule`: it builds a
`models.sequential.SequentialRecommender` from the zoo encoder and input features YAML chose,
draws negatives, computes the loss, and evaluates by full ranking — each positive target's
query (the task says which position) is scored against every item
(`models.blocks.retrieval.target_ranks`, chunked brute-force inner product); items the user had
before the target (its input sequence and the events the `max_len` cap dropped) are excluded
unless `eval.include_history`. Logs `val/` and `test/` `hr@10`, `ndcg@10`, `hr@50`,
`ndcg@50`, `mrr`, `loss` and `targets`, exact over ranks
(`trainers.ranking_metrics.RankingMetrics`).

The item table is looked up once per evaluation epoch (every rank takes part: with TorchRec the
lookup is a collective).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchmetrics
from torch import nn

from lifeseq.features.batch import GenerativeBatch
from lifeseq.features.jagged import Jagged
from lifeseq.features.schema import FeatureSchema
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.retrieval import target_ranks
from lifeseq.models.blocks.sampled_softmax import (
    Negatives,
    SoftmaxLossConfig,
    draw_negatives,
    full_softmax_loss,
    sampled_logits,
    sampled_loss,
)
from lifeseq.models.interfaces import InputFeatures, ModelDims, SequenceEncoder
from lifeseq.models.sequential import SequenceOutput, SequentialRecommender
from lifeseq.trainers.fit_check import direction_error
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig, PlatformModule
from lifeseq.trainers.ranking_metrics import RankingMetrics
from lifeseq.trainers.sharding import ShardingConfig


@dataclass(frozen=True)
class RankingEvalConfig:
    """YAML `model.init_args.eval:`.

    Attributes:
        ks: cut-offs of HR@K and NDCG@K.
        include_history: rank items of the user's history too (default: excluded, as the HSTU
            reference does; RecBole's protocol includes them).
        chunk: items scored at once (memory O(targets × chunk)).
    """

    ks: tuple[int, ...] = (10, 50)
    include_history: bool = False
    chunk: int = 4096

    def __post_init__(self) -> None:
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"eval.ks: expected positive ints, got {self.ks!r}")
        if self.chunk < 1:
            raise ValueError(f"eval.chunk: expected >= 1, got {self.chunk}")


def row_heads(jagged: Jagged, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Values of the first `lengths[i]` entries of row `rows[i]` of `jagged`, concatenated."""
    starts = jagged.offsets[rows]
    within = torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    return jagged.values[torch.repeat_interleave(starts, lengths) + within]


def target_histories(batch: GenerativeBatch) -> Jagged:
    """Items each target's user had before it, one row per target (T rows; what full ranking
    excludes): the items dropped by the `max_len` cap, then `row[:target_hist_len]`."""
    users = batch.target_user
    dropped_lengths = batch.dropped_items.lengths[users]
    prefix_lengths = batch.target_hist_len
    values = torch.cat(
        [
            row_heads(batch.dropped_items, users, dropped_lengths),
            row_heads(batch.sequence["item"], users, prefix_lengths),
        ]
    )
    targets = torch.arange(users.shape[0], device=users.device)
    owner = torch.cat(
        [
            torch.repeat_interleave(targets, dropped_lengths),
            torch.repeat_interleave(targets, prefix_lengths),
        ]
    )
    order = torch.sort(owner, stable=True).indices
    return Jagged(values[order], dropped_lengths + prefix_lengths)


def ranked_targets(batch: GenerativeBatch) -> torch.Tensor:
    """(T,) bool: the targets full ranking scores (positives with at least one prior event)."""
    return (batch.target_label == 1) & (batch.target_hist_len > 0)


class _EvalState(nn.Module):
    """Ranking metrics plus the mean loss of one stage."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        super().__init__()
        self.ranking = RankingMetrics(ks)
        self.loss = torchmetrics.MeanMetric()


class SequentialTask(PlatformModule):
    """Base of the sequential tasks (see the module docstring).

    Args:
        encoder: the zoo encoder (YAML `class_path` + `init_args`; called with `ModelDims`).
        features: the input features (default `item · √d + position`, dropout 0.2).
        loss: kind, negatives, temperature, full softmax (`SoftmaxLossConfig`).
        eval: full-ranking evaluation (`RankingEvalConfig`).
        embedding: embedding backend.
        sharding: TorchRec sharding and fused optimizer of the item table (torchrec backend).
        optimizer: dense optimizer (reference: adamw, lr 1e-3).
        seed: initialisation seed of the model.
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
    """

    #: Whether the task trains causal encoders (next-item) or bidirectional ones (masked-item).
    causal: bool = True
    progress_metrics = ("ndcg@10",)
    data_view = "generative"

    def __init__(
        self,
        encoder: Callable[[ModelDims], SequenceEncoder],
        features: Callable[[ModelDims], InputFeatures] = ItemAndPosition,
        loss: SoftmaxLossConfig | None = None,
        eval: RankingEvalConfig | None = None,  # noqa: A002 (the YAML key)
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
    ) -> None:
        super().__init__(
            embedding=embedding, sharding=sharding, optimizer=optimizer, seed=seed, schema=schema
        )
        self.encoder = encoder
        self.features = features
        self.loss_config = loss or SoftmaxLossConfig()
        self.eval_config = eval or RankingEvalConfig()
        self.eval_states = nn.ModuleDict(
            {stage: _EvalState(self.eval_config.ks) for stage in ("val", "test")}
        )
        self._item_table: torch.Tensor | None = None

    def build_model(self, schema: FeatureSchema) -> SequentialRecommender:
        """The encoder, its input features and the item table for `schema`.

        Raises:
            ValueError: an encoder whose `causal` flag does not suit the task, or a full
                softmax over more items than `loss.full_softmax_max_items`.
        """
        too_large = self.loss_config.catalog_error(schema.tables["item"].num_embeddings)
        if too_large:
            raise ValueError(too_large)
        model = SequentialRecommender(
            self.model_dims(schema),
            self.encoder,
            self.features,
            mask_vector=not self.causal,
            similarity=self.loss_config.similarity,
        )
        error = direction_error(type(self), self.causal, model.dense.encoder, model.dims)
        if error:
            raise ValueError(error)
        return model

    @property
    def sequential(self) -> SequentialRecommender:
        """The unwrapped `SequentialRecommender`."""
        core = self.core
        assert isinstance(core, SequentialRecommender)
        return core

    # --- loss -----------------------------------------------------------------------------

    def negatives(self, positives: torch.Tensor) -> tuple[Negatives, torch.Tensor]:
        """Negatives for positives (M,) and the ids to embed with the step: the positives, then
        the negatives (full softmax: every item, and no negative ids)."""
        loss = self.loss_config
        item_rows = self.sequential.dims.item_rows
        if loss.full_softmax:
            none = Negatives(positives.new_zeros(0, 0))
            return none, torch.arange(item_rows, device=positives.device)
        negatives = draw_negatives(positives, item_rows, loss)
        return negatives, torch.cat([positives, negatives.ids.flatten()])

    def softmax_loss(
        self,
        queries: torch.Tensor,
        positives: torch.Tensor,
        output: SequenceOutput,
        negatives: Negatives,
        weight: float,
    ) -> torch.Tensor:
        """`weight` × mean loss (`loss.kind`) of (M, d) queries against their positives (M,),
        the candidates embedded in `output` (finite on M = 0)."""
        t = self.loss_config.temperature
        if self.loss_config.full_softmax:
            per_position = full_softmax_loss(queries, positives, output.candidates, t)
        else:
            m = positives.shape[0]
            negative_embeddings = output.candidates[m:].view(*negatives.ids.shape, -1)
            logits = sampled_logits(
                queries, positives, output.candidates[:m], negatives, negative_embeddings, t
            )
            per_position = sampled_loss(self.loss_config.kind, *logits)
        return weight * per_position.sum() / max(positives.shape[0], 1)

    # --- evaluation -----------------------------------------------------------------------

    def rank(
        self, stage: str, queries: torch.Tensor, batch: GenerativeBatch, positives: torch.Tensor
    ) -> None:
        """Rank the targets `positives` (T,) bool of `batch` by `queries` (one per ranked
        target) against every item; update the `stage` metrics."""
        exclude = None
        if not self.eval_config.include_history:
            prefixes = target_histories(batch)
            keep = positives.to(prefixes.lengths.device)
            rows = torch.repeat_interleave(keep, prefixes.lengths)
            exclude = Jagged(prefixes.values[rows], prefixes.lengths[keep])
        assert self._item_table is not None
        ranks = target_ranks(
            queries.detach().float(),
            self._item_table,
            batch.target_item[positives],
            exclude,
            chunk=self.eval_config.chunk,
        )
        self.eval_states[stage].ranking.update(ranks)

    def eval_loss(self, stage: str, loss: torch.Tensor, weight: float, labelled: int) -> None:
        """Add a batch's loss (mean over its `labelled` positions) to the `stage` mean."""
        if labelled:
            self.eval_states[stage].loss.update(loss.detach() / weight, weight=labelled)

    def _start_eval(self, stage: str) -> None:
        with torch.no_grad():
            self._item_table = self.sequential.item_table(self.device).float()

    def _compute_eval(self, stage: str) -> dict[str, torch.Tensor]:
        state = self.eval_states[stage]
        # compute() sums over ranks: exact global values on every rank.
        values = {"targets" if k == "count" else k: v for k, v in state.ranking.compute().items()}
        values["loss"] = state.loss.compute()
        state.ranking.reset()
        state.loss.reset()
        self._item_table = None
        return values
