"""`GenerativeModule`: trains HSTU / SASRec next-item models on `GenerativeBatch`es.

    lifeseq train fit --config configs/generative/hstu.yaml --data.root OUT
    lifeseq train test --config configs/generative/hstu.yaml --data.root OUT --ckpt_path CKPT

Same platform as the CTR models (`trainers.platform_module`: strategy, TorchRec sharding of the
item table, optimizers, checkpoints). Per step: `model(batch)` → `model.loss` (sampled or full
softmax over every labelled position). Evaluation is full ranking: each positive target's query
(the position before it) is scored against every item (`models.retrieval.target_ranks`, chunked
brute-force inner product); items the user had before the target (its input sequence and the
events the `max_len` cap dropped) are excluded unless `eval.include_history`. Logs `val/` and `test/` `hr@10`, `ndcg@10`, `hr@50`, `ndcg@50`, `mrr`,
`loss` and `targets`, exact over ranks (`trainers.ranking_metrics.RankingMetrics`).

The item table is looked up once per evaluation epoch (every rank takes part: with TorchRec the
lookup is a collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchmetrics
from torch import nn

from features.batch import GenerativeBatch
from features.jagged import Jagged
from features.schema import FeatureSchema
from models.generative import GenerativeArch, GenerativeConfig, GenerativeModel
from models.retrieval import target_ranks
from models.sampled_softmax import SoftmaxLossConfig
from trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig, PlatformModule
from trainers.ranking_metrics import RankingMetrics
from trainers.sharding import ShardingConfig


@dataclass(frozen=True)
class RankingEvalConfig:
    """YAML `model.init_args.eval:`.

    Attributes:
        ks: cut-offs of HR@K and NDCG@K.
        include_history: rank items of the user's history too (default: excluded, as the HSTU
            reference and RecBole do).
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


def _row_heads(jagged: Jagged, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
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
            _row_heads(batch.dropped_items, users, dropped_lengths),
            _row_heads(batch.sequence["item"], users, prefix_lengths),
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


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DistributedModelParallel / DDP wrappers (its sharded tables included)."""
    while not isinstance(module, GenerativeModel) and hasattr(module, "module"):
        module = module.module
    return module


class _EvalState(nn.Module):
    """Ranking metrics plus the mean loss of one stage."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        super().__init__()
        self.ranking = RankingMetrics(ks)
        self.loss = torchmetrics.MeanMetric()


class GenerativeModule(PlatformModule):
    """Trains a `GenerativeModel` (HSTU or SASRec).

    Args:
        arch: the encoder (`GenerativeArch`).
        loss: negatives, temperature, full softmax (`SoftmaxLossConfig`).
        eval: full-ranking evaluation (`RankingEvalConfig`).
        embedding: embedding backend.
        sharding: TorchRec sharding and fused optimizer of the item table (torchrec backend).
        optimizer: dense optimizer (reference: adamw, lr 1e-3).
        seed: initialisation seed of the model.
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
    """

    def __init__(
        self,
        arch: GenerativeArch | None = None,
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
        self.arch = arch or GenerativeArch()
        self.loss_config = loss or SoftmaxLossConfig()
        self.eval_config = eval or RankingEvalConfig()
        self.eval_states = nn.ModuleDict(
            {stage: _EvalState(self.eval_config.ks) for stage in ("val", "test")}
        )
        self._item_table: torch.Tensor | None = None

    def build_model(self, schema: FeatureSchema) -> nn.Module:
        """The generative model for `schema`'s item table and `max_len`."""
        config = GenerativeConfig.from_schema(
            schema, self.arch, self.loss_config, backend=self.embedding.backend, seed=self.seed
        )
        return GenerativeModel(config)

    @property
    def core(self) -> GenerativeModel:
        """The unwrapped `GenerativeModel`."""
        assert self.model is not None, "configure_model() has not run"
        model = unwrap(self.model)
        assert isinstance(model, GenerativeModel)
        return model

    # --- steps ----------------------------------------------------------------------------

    def _shared_step(self, batch: GenerativeBatch, stage: str) -> torch.Tensor:
        output = self(batch)
        loss = self.core.loss(output, batch)
        if stage == "train":
            self.last_loss = loss.detach()
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=1)
            return loss
        state = self.eval_states[stage]
        labelled = int((output.labels > 0).sum())
        if labelled:
            state.loss.update(loss.detach() / batch.weight, weight=labelled)
        positives = (batch.target_label == 1) & (batch.target_hist_len > 0)
        queries = self.core.target_queries(output, batch)[positives]
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
        state.ranking.update(ranks)
        return loss

    def _start_eval(self) -> None:
        with torch.no_grad():
            self._item_table = self.core.item_table(self.device).float()

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _log_eval(self, stage: str) -> None:
        state = self.eval_states[stage]
        # compute() sums over ranks: exact global values on every rank.
        values = state.ranking.compute()
        values["loss"] = state.loss.compute()
        for name, value in values.items():
            name = "targets" if name == "count" else name
            self.log(f"{stage}/{name}", value, prog_bar=name == "ndcg@10", sync_dist=True)
        state.ranking.reset()
        state.loss.reset()
        self._item_table = None
