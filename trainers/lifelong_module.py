"""`LifelongCtrModule`: `CtrModule` training the lifelong CTR models of `models.lifelong_ctr`.

    lifeseq train fit --config configs/ctr/twin.yaml --data.root OUT

Same platform as the smoke model (strategy, sharding, optimizers, checkpoints, metrics); only
the model differs, chosen by `arch.long_term` (`none` = DIN-N, `sim_hard`, `sim_soft`, `eta`,
`twin`, `full`). Table sizes come from the data module's `FeatureSchema`.
"""

from __future__ import annotations

from torch import nn

from features.schema import FeatureSchema
from models.lifelong_ctr import ArchConfig, LifelongCtrConfig, LifelongCtrModel
from trainers.ctr_module import CtrModule
from trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from trainers.sharding import ShardingConfig


class LifelongCtrModule(CtrModule):
    """Trains a `LifelongCtrModel`.

    Args:
        arch: architecture (long-term unit, K, chunk, heads, widths); see `ArchConfig`.
        embedding: embedding backend.
        sharding: TorchRec sharding and fused embedding optimizer (torchrec backend).
        optimizer: dense optimizer.
        seed: initialisation seed of the model.
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
    """

    def __init__(
        self,
        arch: ArchConfig | None = None,
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
    ) -> None:
        super().__init__(
            embedding=embedding, sharding=sharding, optimizer=optimizer, seed=seed, schema=schema
        )
        self.arch = arch or ArchConfig()

    def build_model(self, schema: FeatureSchema) -> nn.Module:
        """The lifelong model for `schema`'s tables."""
        config = LifelongCtrConfig.from_schema(
            schema, self.arch, backend=self.embedding.backend, seed=self.seed
        )
        return LifelongCtrModel(config)
