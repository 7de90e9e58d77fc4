"""Generative next-item models: HSTU or SASRec over the user's jagged sequence.

    model = GenerativeModel(GenerativeConfig.from_schema(schema, GenerativeArch("hstu")))
    output = model(batch)                          # GenerativeBatch → per-position embeddings
    loss = model.loss(output, batch)               # sampled (or full) softmax
    queries = model.target_queries(output, batch)  # (T, d): one query per target

Both encoders share everything but the blocks: the item table (input and output side, one
table, `embeddings.item`, sharded by TorchRec or plain torch), inputs `item · √d + position`
with dropout, L2-normalized outputs, and the loss (`models.sampled_softmax`) — so their
numbers compare the encoders alone.

Differences from the HSTU reference (generative-recommenders, ML-1M configs), by design:
* The time bias of position i reads the *query time* `GenerativeBatch.query_ts()`: the next
  event's timestamp, and at a row's last position the target's request time (the reference
  pads that one with the padding timestamp 0).
* Each position draws its negatives from a per-batch pool of uniform candidates by default
  (`loss.sampling: pooled`); the reference draws them from the catalog per position
  (`sampling: independent`), M × R lookups that are slow on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from features.batch import GenerativeBatch
from features.jagged import Jagged
from features.schema import FeatureSchema
from models.embeddings import BACKENDS, EmbeddingTableSpec, build_embeddings
from models.hstu import HstuEncoder
from models.jagged_attention import LengthGroup, length_groups
from models.sampled_softmax import (
    FIRST_ITEM_ID,
    Negatives,
    SoftmaxLossConfig,
    draw_negatives,
    full_softmax_loss,
    sampled_softmax_loss,
)
from models.sasrec import SasRecEncoder
from models.seeding import seeded_init
from models.stochastic_length import stochastic_length_keep, subsequence_labels

ENCODERS = ("hstu", "sasrec")
L2_EPS = 1e-6


@dataclass(frozen=True)
class GenerativeArch:
    """YAML `model.init_args.arch:` of a generative model.

    Attributes:
        encoder: `hstu` or `sasrec`.
        blocks: layers.
        heads: attention heads.
        attention_dim: HSTU q/k width per head.
        linear_dim: HSTU u/v width per head.
        ffn_dim: SASRec feed-forward width.
        dropout: dropout inside the blocks.
        input_dropout: dropout on `item · √d + position`.
        num_time_buckets: HSTU time-bias buckets (the table has one more entry).
        length_bucket: rows are padded to a multiple of this inside attention.
        stochastic_length_alpha: HSTU's stochastic length α in (0, 2] (training only), or None.
    """

    encoder: str = "hstu"
    blocks: int = 2
    heads: int = 1
    attention_dim: int = 50
    linear_dim: int = 50
    ffn_dim: int = 50
    dropout: float = 0.2
    input_dropout: float = 0.2
    num_time_buckets: int = 128
    length_bucket: int = 32
    stochastic_length_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(
                f"arch.encoder: expected one of {list(ENCODERS)}, got {self.encoder!r}"
            )
        for name in ("blocks", "heads", "attention_dim", "linear_dim", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"arch.{name}: expected an int >= 1, got {value!r}")
        for name in ("dropout", "input_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(
                    f"arch.{name}: expected a value in [0, 1), got {getattr(self, name)}"
                )
        if self.length_bucket < 1 or self.num_time_buckets < 1:
            raise ValueError("arch.length_bucket and arch.num_time_buckets must be >= 1")
        alpha = self.stochastic_length_alpha
        if alpha is not None and not 0 < alpha <= 2:
            raise ValueError(f"arch.stochastic_length_alpha: expected (0, 2] or null, got {alpha}")


@dataclass(frozen=True)
class GenerativeConfig:
    """Everything `GenerativeModel` needs.

    Attributes:
        arch: the encoder.
        loss: negatives, temperature, full softmax.
        item_rows: rows of the item table (ids 0 padding, 1 OOV, items from 2).
        embedding_dim: d.
        max_len: longest sequence (position table, HSTU normalizer).
        backend: embedding backend, `torchrec` or `torch`.
        seed: initialisation seed.
    """

    arch: GenerativeArch = field(default_factory=GenerativeArch)
    loss: SoftmaxLossConfig = field(default_factory=SoftmaxLossConfig)
    item_rows: int = 3
    embedding_dim: int = 50
    max_len: int = 200
    backend: str = "torch"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"embedding.backend: expected one of {list(BACKENDS)}, got {self.backend!r}"
            )
        if self.item_rows <= FIRST_ITEM_ID:
            raise ValueError(
                f"item_rows: the item table needs items (>= 3 rows), got {self.item_rows}"
            )

    @staticmethod
    def from_schema(
        schema: FeatureSchema,
        arch: GenerativeArch,
        loss: SoftmaxLossConfig | None = None,
        backend: str = "torch",
        seed: int = 0,
    ) -> GenerativeConfig:
        """Table sizes and widths from the data's schema (`item` table, `max_len`)."""
        return GenerativeConfig(
            arch=arch,
            loss=loss or SoftmaxLossConfig(),
            item_rows=schema.tables["item"].num_embeddings,
            embedding_dim=schema.config.embedding_dim,
            max_len=schema.config.max_len,
            backend=backend,
            seed=seed,
        )

    def tables(self) -> list[EmbeddingTableSpec]:
        """The item table: looked up by the sequence and by candidate (positive/negative) ids."""
        return [
            EmbeddingTableSpec(
                "item", self.item_rows, self.embedding_dim, ("sequence_item", "candidate_item")
            )
        ]


@dataclass
class GenerativeOutput:
    """Per-position outputs of a batch.

    Attributes:
        user: shape (N', d), L2-normalized user embedding after each position (N' = N, or the
            kept events under stochastic length).
        labels: shape (N',) int64, next item of each position (0 = none).
        lengths: shape (B,) row lengths of `user`.
        negatives: the sampled negatives (`models.sampled_softmax.Negatives`; no ids for the
            full softmax).
        candidates: L2-normalized embeddings of `labels[labels > 0]` then `negatives`
            (full softmax: of every item), shape (C, d).
    """

    user: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    negatives: Negatives
    candidates: torch.Tensor


class GenerativeEncoderUnits(nn.Module):
    """Embedded sequence → L2-normalized user embedding after each position: `item·√d +
    position`, dropout, the encoder blocks, L2 norm.

    Shared by `GenerativeModel` (training, jagged batches) and `models.generative_request`
    (one serving request, `torch.export`ed). Subclasses set `config`, `position`,
    `input_dropout` and `encoder`.
    """

    config: GenerativeConfig
    position: nn.Embedding
    input_dropout: nn.Dropout
    encoder: nn.Module

    def encode(
        self,
        item_embeddings: torch.Tensor,
        offsets: torch.Tensor,
        positions: torch.Tensor,
        key_ts: torch.Tensor,
        query_ts: torch.Tensor,
        groups: list[LengthGroup],
    ) -> torch.Tensor:
        """Encode jagged rows.

        Args:
            item_embeddings: (N, d) raw item-table rows of the events.
            offsets: (B + 1,) row offsets.
            positions: (N,) position of each event in its row.
            key_ts, query_ts: (N,) event times and the time each position predicts for.
            groups: the rows' length groups (`length_groups`).

        Returns:
            (N, d) L2-normalized user embedding after each position.
        """
        x = item_embeddings * math.sqrt(self.config.embedding_dim)
        x = self.input_dropout(x + self.position(positions))  # (N, d)
        if isinstance(self.encoder, HstuEncoder):
            encoded = self.encoder(x, offsets, key_ts, query_ts, groups)
        else:
            encoded = self.encoder(x, offsets, groups)
        return F.normalize(encoded, dim=-1, eps=L2_EPS)


class GenerativeModel(GenerativeEncoderUnits):
    """See the module docstring.

    Args:
        config: the model configuration.
    """

    def __init__(self, config: GenerativeConfig) -> None:
        super().__init__()
        self.config = config
        arch, d = config.arch, config.embedding_dim
        self.embeddings = build_embeddings(
            config.tables(), backend=config.backend, seed=config.seed
        )
        with seeded_init(config.seed):
            self.position = nn.Embedding(config.max_len, d)
            nn.init.trunc_normal_(self.position.weight, std=math.sqrt(1.0 / d))
            self.input_dropout = nn.Dropout(arch.input_dropout)
            self.encoder: nn.Module
            if arch.encoder == "hstu":
                self.encoder = HstuEncoder(
                    d, arch.blocks, arch.heads, arch.attention_dim, arch.linear_dim, arch.dropout,
                    max_len=config.max_len, num_time_buckets=arch.num_time_buckets,
                )  # fmt: skip
            else:
                self.encoder = SasRecEncoder(d, arch.blocks, arch.heads, arch.ffn_dim, arch.dropout)

    # --- inputs ---------------------------------------------------------------------------

    def _rows(
        self, batch: GenerativeBatch
    ) -> tuple[Jagged, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, key timestamps, query timestamps, labels) of the rows, after stochastic
        length in training."""
        items, ts = batch.sequence["item"], batch.sequence["ts"]
        if items.max_length > self.config.max_len:
            raise ValueError(
                f"GenerativeModel: a row of {items.max_length} events exceeds max_len "
                f"{self.config.max_len}; collate with the same max_len"
            )
        labels, query_ts = batch.next_item().values, batch.query_ts().values
        alpha = self.config.arch.stochastic_length_alpha
        if alpha is None or not self.training:
            return items, ts.values, query_ts, labels
        offsets = items.offsets
        keep = stochastic_length_keep(offsets, alpha, self.config.max_len)
        kept_labels = subsequence_labels(keep, offsets, items.values, labels)
        kept_query_ts = subsequence_labels(keep, offsets, ts.values, query_ts)
        rows = torch.arange(items.batch_size, device=items.lengths.device)
        event_row = torch.repeat_interleave(rows, items.lengths)  # (N,)
        kept_lengths = torch.zeros_like(items.lengths).index_add_(
            0, event_row, keep.to(items.lengths.dtype)
        )
        kept = Jagged(items.values[keep], kept_lengths)
        return kept, ts.values[keep], kept_query_ts, kept_labels

    def _candidates(self, positives: torch.Tensor) -> Negatives:
        """Negatives for a batch with `positives` (M,); none (a (0, 0) id tensor) for the full
        softmax, which scores every item."""
        loss = self.config.loss
        if loss.full_softmax:
            return Negatives(positives.new_zeros(0, 0))
        return draw_negatives(positives, self.config.item_rows, loss)

    # --- forward --------------------------------------------------------------------------

    def forward(self, batch: GenerativeBatch) -> GenerativeOutput:
        """Encode every row; look up the loss's candidates in the same embedding call."""
        items, key_ts, query_ts, labels = self._rows(batch)
        positives = labels[labels > 0]
        negatives = self._candidates(positives)
        if self.config.loss.full_softmax:
            candidate_ids = torch.arange(self.config.item_rows, device=positives.device)
        else:
            candidate_ids = torch.cat([positives, negatives.ids.flatten()])
        ones = torch.ones_like(candidate_ids)
        looked_up = self.embeddings(
            {"sequence_item": items, "candidate_item": Jagged(candidate_ids, ones)}
        )
        offsets = items.offsets
        positions = torch.arange(
            items.values.shape[0], device=offsets.device
        ) - torch.repeat_interleave(offsets[:-1], items.lengths)
        groups = length_groups(offsets, self.config.arch.length_bucket)
        user = self.encode(
            looked_up["sequence_item"].values, offsets, positions, key_ts, query_ts, groups
        )
        return GenerativeOutput(
            user=user,
            labels=labels,
            lengths=items.lengths,
            negatives=negatives,
            candidates=F.normalize(looked_up["candidate_item"].values, dim=-1, eps=L2_EPS),
        )

    def loss(self, output: GenerativeOutput, batch: GenerativeBatch) -> torch.Tensor:
        """Mean next-item loss over the labelled positions, times `batch.weight` (finite on a
        padding batch)."""
        labelled = output.labels > 0
        queries, positives = output.user[labelled], output.labels[labelled]
        t = self.config.loss.temperature
        if self.config.loss.full_softmax:
            per_position = full_softmax_loss(queries, positives, output.candidates, t)
        else:
            m = positives.shape[0]
            negative_embeddings = output.candidates[m:].view(*output.negatives.ids.shape, -1)
            per_position = sampled_softmax_loss(
                queries, positives, output.candidates[:m], output.negatives, negative_embeddings, t
            )
        return batch.weight * per_position.sum() / max(positives.shape[0], 1)

    def target_queries(self, output: GenerativeOutput, batch: GenerativeBatch) -> torch.Tensor:
        """User embedding for each target, shape (T, d): the row position just before it
        (`target_hist_len - 1`); zeros for a target with no prior position in its row.

        Raises:
            ValueError: `output` comes from a stochastic-length (training) forward.
        """
        if not torch.equal(output.lengths, batch.sequence["item"].lengths):
            raise ValueError(
                "target_queries: output rows differ from the batch's (stochastic "
                "length is on); call it on an eval-mode forward"
            )
        offsets = torch.cat([output.lengths.new_zeros(1), torch.cumsum(output.lengths, 0)])
        position = offsets[batch.target_user] + batch.target_hist_len - 1
        valid = batch.target_hist_len > 0
        queries = output.user[position.clamp(min=0)]
        return queries * valid.unsqueeze(1).to(queries.dtype)

    # --- items ----------------------------------------------------------------------------

    def item_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalized embeddings of item `ids` (M,) → (M, d)."""
        out = self.embeddings({"candidate_item": Jagged(ids, torch.ones_like(ids))})
        return F.normalize(out["candidate_item"].values, dim=-1, eps=L2_EPS)

    def item_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every item's L2-normalized embedding, shape (V, d) (rows 0 and 1 included)."""
        return self.item_embeddings(torch.arange(self.config.item_rows, device=device))
