"""Pop: the most-popular baseline inside the sequence-encoder interface — one learned query
vector for every position, whatever the history.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/pop.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Ranking every item against a single query q is ranking by `cos(q, item) / τ`, and the
next-item task's full softmax over one shared query is maximized when `softmax(cos(q, ·) / τ)`
equals the items' label frequencies: the maximum-likelihood unigram model. So Pop ranks items
by *learned* popularity, not by a count: it is only as close to the count order as training
got (with cosine scores, the largest-to-smallest probability ratio it can express is
e^{2/τ}; ~e^40 at the base's τ = 0.05), and with mini-batches and a constant learning rate
it follows the recent batches' frequencies, so near-equal items may swap. `tests/unit/test_pop.py`
checks that on a skewed catalog trained full-batch its top 10 equal the top 10 by training
count, in order, and its softmax equals the label frequencies within 0.002. Its config uses full softmax
(ML-100K's 1,682 items are cheap); evaluation excludes each user's history as for every model,
so it recommends the most popular items the user has not had.

The input features are ignored: `0 · x` keeps them on the graph, so every parameter gets a
(zero) gradient in every step, which DDP needs. Causal trivially: no position reads any event.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows


@dataclass(frozen=True)
class PopConfig:
    """YAML `encoder.init_args.config` of `Pop`: nothing to set (the query vector is the whole
    model; the loss and temperature are the task's)."""


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = PopConfig()


class Pop(SequenceEncoder):
    """One learned query vector q (d,) at every position.

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: nothing to set.
    """

    causal = True

    def __init__(self, dims: ModelDims, config: PopConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        self.query = nn.Parameter(torch.empty(dims.embedding_dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events (ignored) → (N, d), q in every row."""
        return self.query.expand(x.shape[0], -1) + 0.0 * x  # (N, d)
