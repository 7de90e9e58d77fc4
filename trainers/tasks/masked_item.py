"""`MaskedItemModule`: the masked-item (cloze) task — a bidirectional zoo encoder trained to
recover hidden items from both sides (BERT4Rec's recipe), evaluated by the same full ranking
as the next-item task with a mask appended after the history.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/cloze.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Training: each event of a row is hidden with probability `mask_ratio` (a row with none hidden
gets its last event hidden), its input replaced by a learned mask vector; the loss is the
softmax loss (sampled or full, `loss:`) of the hidden positions against their own items. With
`last_item_ratio` > 0 that fraction of the rows hides only its last event instead — the case the
evaluation asks (a mask after the history; RecBole 1.2.1's BERT4Rec does so for a whole batch with
probability `ft_ratio`, 0.5 by default; here each row draws).
Evaluation: for each ranked target, the row `history[:target_hist_len] + [MASK]` (the mask at
the target's request time) is encoded and the mask position's output is the query. The
position table has `max_len + 1` rows, so a full row still takes its mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lifeseq.features.batch import GenerativeBatch
from lifeseq.features.jagged import Jagged
from lifeseq.features.schema import FeatureSchema
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig
from lifeseq.models.interfaces import InputFeatures, ModelDims, SequenceEncoder
from lifeseq.models.sequential import SequenceStep
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from lifeseq.trainers.sharding import ShardingConfig
from lifeseq.trainers.tasks.sequential import (
    RankingEvalConfig,
    SequentialTask,
    ranked_targets,
    row_heads,
)


def cloze_mask(
    lengths: torch.Tensor,
    ratio: float,
    context: torch.Tensor | None = None,
    last_only: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) bool: each event of rows of `lengths` (B,) hidden with probability `ratio`, and a
    row's last event when nothing else of it is (every non-empty row trains). Events where
    `context` (N,) bool is true (whole-history windows' context) are never hidden; rows where
    `last_only` (B,) bool is true hide their last event only."""
    n = int(lengths.sum())
    mask = torch.rand(n, device=lengths.device) < ratio
    if context is not None:
        mask &= ~context
    rows = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths)
    if last_only is not None:
        mask &= ~last_only[rows]
    hidden = torch.zeros_like(lengths).index_add_(0, rows, mask.to(lengths.dtype))
    last = torch.cumsum(lengths, 0) - 1
    mask[last[(hidden == 0) & (lengths > 0)]] = True
    return mask


def masked_query_rows(
    batch: GenerativeBatch, targets: torch.Tensor
) -> tuple[Jagged, torch.Tensor, torch.Tensor]:
    """One row per target of `targets` (T,) bool: its history prefix then a masked slot.

    Returns:
        (items, key_ts, mask): Jagged items (the slot holds id 0), (N',) times (the slot: the
        target's request time), (N',) bool true at each row's slot.
    """
    users, prefix = batch.target_user[targets], batch.target_hist_len[targets]
    sequence = batch.sequence
    lengths = prefix + 1
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    slot = offsets[1:] - 1  # (T',)
    total = int(offsets[-1])
    mask = torch.zeros(total, dtype=torch.bool, device=lengths.device)
    mask[slot] = True
    items = torch.zeros(total, dtype=sequence["item"].values.dtype, device=lengths.device)
    key_ts = torch.zeros(total, dtype=sequence["ts"].values.dtype, device=lengths.device)
    items[~mask] = row_heads(sequence["item"], users, prefix)
    key_ts[~mask] = row_heads(sequence["ts"], users, prefix)
    key_ts[slot] = batch.target_ts[targets]
    return Jagged(items, lengths), key_ts, mask


def masked_query_users(batch: GenerativeBatch, targets: torch.Tensor) -> torch.Tensor:
    """(T',) int64 user hash of each `masked_query_rows` row: its target's user's."""
    return batch.user_ids[batch.target_user[targets]]


class MaskedItemModule(SequentialTask):
    """Trains a bidirectional `SequenceEncoder` from the zoo by cloze (see the module
    docstring).

    Args:
        encoder: the zoo encoder, bidirectional (e.g. `models.zoo.sequence.sasrec.SasRec` with
            `config.causal: false`).
        features: the input features (default `ItemAndPosition`).
        loss: negatives, temperature, full softmax.
        eval: full-ranking evaluation.
        mask_ratio: probability of hiding each event in training, in (0, 1).
        last_item_ratio: fraction of training rows that hide only their last event, in [0, 1]
            (0: none, the paper's cloze alone).
        embedding, sharding, optimizer, seed, schema: the platform's (see `SequentialTask`).
    """

    causal = False

    def __init__(
        self,
        encoder: Callable[[ModelDims], SequenceEncoder],
        features: Callable[[ModelDims], InputFeatures] = ItemAndPosition,
        loss: SoftmaxLossConfig | None = None,
        eval: RankingEvalConfig | None = None,  # noqa: A002 (the YAML key)
        mask_ratio: float = 0.2,
        last_item_ratio: float = 0.0,
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
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio: expected a value in (0, 1), got {mask_ratio}")
        if not 0 <= last_item_ratio <= 1:
            raise ValueError(f"last_item_ratio: expected a value in [0, 1], got {last_item_ratio}")
        self.mask_ratio = mask_ratio
        self.last_item_ratio = last_item_ratio

    def model_dims(self, schema: FeatureSchema) -> ModelDims:
        """The data's sizes with one more position (the mask appended to a full row)."""
        return ModelDims.from_schema(
            schema, backend=self.embedding.backend, seed=self.seed, extra_positions=1
        )

    def step(
        self, batch: GenerativeBatch, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, queries (M, d), positives (M,)) of one forward: cloze training (`train`), or
        one masked row per ranked target (evaluation)."""
        if train:
            items, ts = batch.sequence["item"], batch.sequence["ts"].values
            lengths = items.lengths
            last_only = None
            if self.last_item_ratio > 0:
                last_only = torch.rand(lengths.shape[0], device=lengths.device)
                last_only = last_only < self.last_item_ratio
            mask = cloze_mask(lengths, self.mask_ratio, batch.context_positions(), last_only)
            positives = items.values[mask]
            users = batch.user_ids
        else:
            ranked = ranked_targets(batch)
            items, ts, mask = masked_query_rows(batch, ranked)
            positives = batch.target_item[ranked]
            users = masked_query_users(batch, ranked)
        negatives, candidates = self.negatives(positives)
        output = self(SequenceStep(items, ts, ts, candidates, mask, users))
        queries = output.user[mask]  # (M, d): one per hidden position, in row order
        loss = self.softmax_loss(queries, positives, output, negatives, batch.weight)
        return loss, queries, positives

    def training_loss(self, batch: GenerativeBatch) -> torch.Tensor:
        """The loss a training step minimizes on `batch` (no logging)."""
        return self.step(batch, train=True)[0]

    def _shared_step(self, batch: GenerativeBatch, stage: str) -> torch.Tensor:
        loss, queries, positives = self.step(batch, train=stage == "train")
        if stage == "train":
            return self.log_train_loss(loss)
        self.eval_loss(stage, loss, batch.weight, int(positives.shape[0]))
        self.rank(stage, queries, batch, ranked_targets(batch))
        return loss
