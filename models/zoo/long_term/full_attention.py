"""Full attention: the ESU over every behavior of each target's window — the cost/quality
reference a GSU approximates (TWIN's paper compares against it).

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/full.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Exact multi-head target attention over the whole window, slice by slice with an online softmax
(`MultiHeadTargetAttention.attend_windows`): O(T × chunk) memory, never O(T × L), but per-pair
value projections over all L events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lifeseq.models.blocks.checks import check_positive
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.target_attention import EsuConfig, MultiHeadTargetAttention
from lifeseq.models.interfaces import LongTermOutput, LongTermUnit, ModelDims


@dataclass(frozen=True)
class FullAttentionConfig:
    """YAML `long_term.init_args.config` of `FullAttention`.

    Attributes:
        chunk: window events per slice.
        esu: the attention's shape.
        logit_scale: the attention logits (and the null slot's) times this before the softmax.
            A softmax over thousands of behaviors needs logit gaps of several nats to put its
            weight on the few relevant ones, where TWIN's top-K softmax needs only the order;
            at the trainer's learning rate the plain logits (1) do not get there in an epoch.
    """

    chunk: int = 1024
    esu: EsuConfig = field(default_factory=EsuConfig)
    logit_scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive("FullAttentionConfig.chunk", self.chunk)
        if not self.logit_scale > 0:
            raise ValueError(
                f"FullAttentionConfig.logit_scale: expected > 0, got {self.logit_scale}"
            )


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = FullAttentionConfig()


class FullAttention(LongTermUnit):
    """The ESU over the whole window.

    Args:
        dims: the data's sizes.
        config: chunk and the attention's shape.
    """

    def __init__(self, dims: ModelDims, config: FullAttentionConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        d, esu = dims.embedding_dim, config.esu
        self.attention = MultiHeadTargetAttention(
            target_dim=2 * d, inherent_dim=2 * d, cross_dim=3 * d, heads=esu.heads,
            head_dim=esu.head_dim, out_dim=esu.out_dim, logit_scale=config.logit_scale,
        )  # fmt: skip
        self.out_dim = esu.out_dim

    def forward(self, inputs: LifelongInputs) -> LongTermOutput:
        """(T, out_dim) attention over every behavior of each window."""
        query = self.attention.query(inputs.target_inherent)  # (T, H, dh)
        event_keys = self.attention.keys(inputs.event_inherent)  # (N, H, dh)
        out = self.attention.attend_windows(query, event_keys, inputs, self.config.chunk)
        return LongTermOutput(out)
