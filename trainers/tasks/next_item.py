"""`NextItemModule`: the next-item task — a causal zoo encoder trained to predict each
position's next item, evaluated by full ranking.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/hstu.yaml \
        --data.root OUT --trainer.default_root_dir RUN
    lifeseq train test ... --ckpt_path RUN/checkpoints/best.ckpt

Labels: every position of a row is supervised with its next item, the row's last position with
the target that directly follows it (`GenerativeBatch.next_item`). Loss: sampled softmax (or
full softmax, BCE, BPR, TOP1: `loss.kind`) over L2-normalized embeddings
(`models.blocks.sampled_softmax`). Stochastic length
(`stochastic_length_alpha`, HSTU paper §3.4, training only) trains on random subsequences of
long rows, relabelled with the next kept event. Next-T targets (`targets_per_position`, Caser,
training only) pair each labelled position with the labels of the next T positions of its row
(`next_targets`). Evaluation: the query of a target is the position just before it
(`target_queries`); see `trainers.tasks.sequential`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lifeseq.features.batch import GenerativeBatch
from lifeseq.features.jagged import Jagged
from lifeseq.features.schema import FeatureSchema
from lifeseq.models.blocks.checks import check_positive
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig
from lifeseq.models.blocks.stochastic_length import stochastic_length_keep, subsequence_labels
from lifeseq.models.interfaces import InputFeatures, ModelDims, SequenceEncoder
from lifeseq.models.sequential import SequenceOutput, SequenceStep
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from lifeseq.trainers.sharding import ShardingConfig
from lifeseq.trainers.tasks.sequential import RankingEvalConfig, SequentialTask, ranked_targets

__all__ = ["NextItemModule", "RankingEvalConfig", "next_targets", "target_queries"]


def next_targets(
    labels: torch.Tensor, lengths: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (query position, positive) pairs of next-T training (Caser: "predicts the next T
    items"): position i of a row, if labelled (label > 0), is paired with the labels of
    positions i..i+T−1 of its row that are > 0 — the items at i+1..i+T that exist, the row's
    last label being its follower — each pair its own (query, positive) for the loss.

    Args:
        labels: shape (N,), next-item labels of the packed rows (0 = unsupervised / none).
        lengths: shape (B,), row lengths (sum N).
        count: T >= 1 (T = 1: the labelled positions and their labels).

    Returns:
        (positions (P,) int64 indices into the N positions, positives (P,) their items),
        ordered by position, then by distance.
    """
    n, device = labels.shape[0], labels.device
    index = torch.arange(n, device=device)  # (N,)
    row_end = torch.repeat_interleave(torch.cumsum(lengths, 0), lengths)  # (N,) past the row
    ahead = index.unsqueeze(1) + torch.arange(count, device=device)  # (N, T)
    future = labels[ahead.clamp(max=max(n - 1, 0))]  # (N, T)
    keep = (ahead < row_end.unsqueeze(1)) & (future > 0) & (labels > 0).unsqueeze(1)
    return index.unsqueeze(1).expand_as(ahead)[keep], future[keep]


def target_queries(output: SequenceOutput, batch: GenerativeBatch) -> torch.Tensor:
    """User embedding for each target, shape (T, d): the row position just before it
    (`target_hist_len - 1`); zeros for a target with no prior position in its row.

    Raises:
        ValueError: `output` comes from a stochastic-length (training) forward.
    """
    if not torch.equal(output.lengths, batch.sequence["item"].lengths):
        raise ValueError(
            "target_queries: output rows differ from the batch's (stochastic length is on); "
            "call it on an eval-mode forward"
        )
    offsets = torch.cat([output.lengths.new_zeros(1), torch.cumsum(output.lengths, 0)])
    position = offsets[batch.target_user] + batch.target_hist_len - 1
    valid = batch.target_hist_len > 0
    queries = output.user[position.clamp(min=0)]
    return queries * valid.unsqueeze(1).to(queries.dtype)


class NextItemModule(SequentialTask):
    """Trains a causal `SequenceEncoder` from the zoo on next-item prediction.

    Args:
        encoder: the zoo encoder (YAML `class_path` + `init_args`), e.g.
            `models.zoo.sequence.hstu.Hstu`.
        features: the input features (default `ItemAndPosition`).
        loss: negatives, temperature, full softmax.
        eval: full-ranking evaluation.
        stochastic_length_alpha: stochastic length α in (0, 2] (training only), or None.
        targets_per_position: T >= 1; T > 1 trains each labelled position on its next T items
            (`next_targets`; training only, evaluation unchanged).
        embedding, sharding, optimizer, seed, schema: the platform's (see `SequentialTask`).
    """

    causal = True

    def __init__(
        self,
        encoder: Callable[[ModelDims], SequenceEncoder],
        features: Callable[[ModelDims], InputFeatures] = ItemAndPosition,
        loss: SoftmaxLossConfig | None = None,
        eval: RankingEvalConfig | None = None,  # noqa: A002 (the YAML key)
        stochastic_length_alpha: float | None = None,
        targets_per_position: int = 1,
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
    ) -> None:
        super().__init__(
            encoder, features, loss, eval, embedding=embedding, sharding=sharding,
            optimizer=optimizer, seed=seed, schema=schema,
        )  # fmt: skip
        alpha = stochastic_length_alpha
        if alpha is not None and not 0 < alpha <= 2:
            raise ValueError(f"stochastic_length_alpha: expected (0, 2] or null, got {alpha}")
        self.stochastic_length_alpha = alpha
        check_positive("targets_per_position", targets_per_position)
        self.targets_per_position = targets_per_position

    def rows(
        self, batch: GenerativeBatch
    ) -> tuple[Jagged, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, key timestamps, query timestamps, labels) of the rows, after stochastic
        length in training; context positions of whole-history windows have label 0."""
        items, ts = batch.sequence["item"], batch.sequence["ts"]
        labels, query_ts = batch.next_item().values, batch.query_ts().values
        context = batch.context_positions()  # whole-history windows: not supervised
        labels = labels.masked_fill(context, 0)
        alpha = self.stochastic_length_alpha
        if alpha is None or not self.training:
            return items, ts.values, query_ts, labels
        offsets = items.offsets
        keep = stochastic_length_keep(offsets, alpha, self.sequential.dims.max_len)
        kept_labels = subsequence_labels(keep, offsets, items.values, labels)
        kept_query_ts = subsequence_labels(keep, offsets, ts.values, query_ts)
        rows = torch.arange(items.batch_size, device=items.lengths.device)
        event_row = torch.repeat_interleave(rows, items.lengths)  # (N,)
        kept_lengths = torch.zeros_like(items.lengths).index_add_(
            0, event_row, keep.to(items.lengths.dtype)
        )
        kept = Jagged(items.values[keep], kept_lengths)
        kept_labels = kept_labels.masked_fill(context[keep], 0)
        return kept, ts.values[keep], kept_query_ts, kept_labels

    def step(self, batch: GenerativeBatch) -> tuple[torch.Tensor, SequenceOutput, int]:
        """(loss, output, (query, positive) pairs) of one forward on `batch`: every position
        labelled with its next item (training: its next `targets_per_position` items),
        negatives drawn, the loss."""
        items, key_ts, query_ts, labels = self.rows(batch)
        count = self.targets_per_position if self.training else 1
        positions, positives = next_targets(labels, items.lengths, count)
        negatives, candidates = self.negatives(positives)
        output = self(SequenceStep(items, key_ts, query_ts, candidates, users=batch.user_ids))
        loss = self.softmax_loss(output.user[positions], positives, output, negatives, batch.weight)
        return loss, output, int(positives.shape[0])

    def training_loss(self, batch: GenerativeBatch) -> torch.Tensor:
        """The loss a training step minimizes on `batch` (no logging)."""
        return self.step(batch)[0]

    def _shared_step(self, batch: GenerativeBatch, stage: str) -> torch.Tensor:
        loss, output, labelled = self.step(batch)
        if stage == "train":
            return self.log_train_loss(loss)
        self.eval_loss(stage, loss, batch.weight, labelled)
        ranked = ranked_targets(batch)
        self.rank(stage, target_queries(output, batch)[ranked], batch, ranked)
        return loss
