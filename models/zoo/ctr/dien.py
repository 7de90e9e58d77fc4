"""DIEN (Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI'19): an interest extractor GRU over the user's most recent behaviors, trained also by an
auxiliary next-behavior loss, then an interest evolving GRU with an attentional update gate
(AUGRU) driven by attention to the target; its final state and the target go to an MLP tower.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/dien.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Per target j (item t_j = [item_emb, category_emb], 2D), over the n = `recent_len` most recent
behaviors of its window (oldest first; `models.blocks.recent_behaviors`), e_i = [item_emb,
category_emb] of behavior i and b_i its behavior-type embedding:

    h_i   = GRU(h_{i-1}, [e_i, b_i])                                    interest extractor (H)
    a_i   = softmax_i(h_i · W_a t_j + beta(c_ij))                       attention to the target
    h'_i  = AUGRU(h'_{i-1}, h_i, a_i)                                   interest evolution (H)
    logit = MLP([t_j, h'_n (, DIN(t_j; the n behaviors))])              tower

    AUGRU:  r = σ(W_r x + U_r h' + b_r),  u = a_i · σ(W_u x + U_u h' + b_u),
            h~ = tanh(W_h x + r ∘ (U_h h') + b_h),  h' ← (1 − u) ∘ h' + u ∘ h~

so a behavior with attention 0 leaves the interest state unchanged. `beta(c_ij)` is a linear
bias of the target-behavior cross features every lifelong CTR model here shares (behavior
type, log2 time gap to the target's request time, same category as the target), as the ESU of
`models.blocks.target_attention` uses them; the paper's attention is the bilinear term alone.
`din_hidden` (not null) adds DIN's pooling of the same n behaviors to the tower (off by default,
as in the paper).

Auxiliary loss (the paper's L_aux, weight `aux_weight`, α in the paper): the extractor state h_i
must score the next behavior's e_{i+1} above a negative, through a small MLP on [h_i, e] (the
authors' `auxiliary_net`, hidden 100-50):

    L_aux = mean over pairs (j, i), i and i + 1 in j's window, of
            BCE(aux(h_i, e_{i+1}), 1) + BCE(aux(h_i, e_neg), 0)

The data has no sampled non-clicked sequence (the paper's ê), so the **negative** is in-batch:
the item-inherent features e of a uniformly drawn event of the batch's flat history (a draw per
pair, from the global RNG — so popular items are drawn more often, as an in-batch softmax's
negatives are); a pair whose negative is its own next item is dropped. The loss goes to the task
as `CtrOutput.aux_loss` (the task adds it, times the batch's weight, to the CTR loss) in
training only: evaluation (`val/loss` is the BCE alone) and serving requests draw nothing, so
validation leaves the training RNG stream as it was and export traces no random draw.

Windows shorter than n leave their first slots invalid: both GRUs keep their state there (a
masked step), the attention gives them weight 0 and the auxiliary loss skips them, so a target
reads only events of its own window. The GRUs are loops over the n slots (static); under
`torch.export` (the serving request) each is one `scan` of the same step (`recur`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.models.blocks.checks import check_positive, check_widths
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.mlp import mlp
from lifeseq.models.blocks.recent_behaviors import RecentBehaviorInputs, RecentBehaviors
from lifeseq.models.blocks.target_attention import DinAttention
from lifeseq.models.blocks.windows import gather_rows
from lifeseq.models.ctr_features import CtrFeatures, CtrOutput
from lifeseq.models.interfaces import CtrModel, ModelDims
from lifeseq.pipeline.compat import scan as torch_scan


@dataclass(frozen=True)
class DienConfig:
    """YAML `model.init_args.config` of `Dien`.

    Attributes:
        recent_len: n, the most recent behaviors of each window the GRUs read.
        hidden_size: H, the width of both GRUs (the paper: the behavior embedding's width).
        aux_weight: weight of the auxiliary next-behavior loss (α; the paper: 1.0); 0 turns it
            off (and builds no auxiliary network).
        aux_hidden: hidden widths of the auxiliary network.
        din_hidden: hidden widths of DIN's activation unit pooling the n behaviors into the
            tower, or None for no DIN pooling (the paper's DIEN).
        tower_hidden: hidden widths of the tower MLP.

    Raises:
        ValueError: a value out of range.
    """

    recent_len: int = 50
    hidden_size: int = 32
    aux_weight: float = 1.0
    aux_hidden: tuple[int, ...] = (100, 50)
    din_hidden: tuple[int, ...] | None = None
    tower_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        for name in ("recent_len", "hidden_size"):
            check_positive(f"DienConfig.{name}", getattr(self, name))
        if isinstance(self.aux_weight, bool) or not self.aux_weight >= 0:
            raise ValueError(
                f"DienConfig.aux_weight: expected a number >= 0, got {self.aux_weight!r}"
            )
        for name in ("aux_hidden", "din_hidden", "tower_hidden"):
            if getattr(self, name) is not None:
                widths = check_widths(f"DienConfig.{name}", getattr(self, name))
                object.__setattr__(self, name, widths)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = DienConfig()


def recur(
    step: Callable[..., torch.Tensor], h0: torch.Tensor, xs: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """The states `h_i = step(h_{i-1}, *(x[:, i] for x in xs))` over the n slots (dim 1).

    Eagerly a loop over the n (static) slots; under `torch.export` one `scan` of the same step,
    so the request program holds one traced step instead of n unrolled ones (export == eager is
    the conformance suite's check).

    Returns:
        (T, n, H) the state after every slot.
    """
    if torch.compiler.is_exporting():
        scan = torch_scan()

        targets = h0.shape[0]  # T, symbolic under export

        def body(
            h: torch.Tensor, x_i: tuple[torch.Tensor, ...]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            # The no-op view names T inside the step, so export passes it to the scan as an
            # input; AOTInductor sizes the stacked states from the scan's inputs and fails
            # (`KeyError: s…`, torch 2.13) when T is not among them.
            new = step(h, *x_i).view(targets, -1)
            return new, new.clone()

        _, states = scan(body, h0, tuple(x.transpose(0, 1) for x in xs))  # (n, T, H)
        return states.transpose(0, 1)
    h, states = h0, []
    for i in range(xs[0].shape[1]):
        h = step(h, *(x[:, i] for x in xs))  # (T, H)
        states.append(h)
    return torch.stack(states, dim=1)  # (T, n, H)


class AuGruCell(nn.Module):
    """DIEN's GRU with attentional update gate: the update gate scaled by the step's
    attention (see the module docstring), so attention 0 keeps the state.

    Args:
        input_size: width of the step's input.
        hidden_size: H.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, 3 * hidden_size)  # [r | u | h~]
        self.hidden_proj = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """x: (T, input_size), h: (T, H), attention: (T,) → the next state (T, H)."""
        gx_r, gx_u, gx_h = self.input_proj(x).chunk(3, dim=-1)  # (T, H) each
        gh_r, gh_u, gh_h = self.hidden_proj(h).chunk(3, dim=-1)
        r = torch.sigmoid(gx_r + gh_r)
        u = attention.unsqueeze(-1) * torch.sigmoid(gx_u + gh_u)  # (T, H)
        candidate = torch.tanh(gx_h + r * gh_h)
        return (1 - u) * h + u * candidate


class Dien(CtrModel):
    """See the module docstring.

    Args:
        dims: the data's sizes.
        config: the GRUs, the auxiliary loss and the tower; None: `DEFAULT_CONFIG`.
            (Optional so that jsonargparse, switching `configs/ctr/base.yaml`'s `LifelongCtr`
            to this class, drops `LifelongCtr`'s `config` instead of merging its keys into
            this one: a dataclass-typed `config` of both classes would be merged.)
    """

    def __init__(self, dims: ModelDims, config: DienConfig | None = None) -> None:
        super().__init__()
        config = DEFAULT_CONFIG if config is None else config
        self.config = config
        self.dims = dims
        self.behaviors = RecentBehaviorInputs(dims, config.recent_len)
        d, h = dims.embedding_dim, config.hidden_size
        inherent = self.behaviors.inherent_dim
        self.extractor = nn.GRUCell(inherent + d, h)
        self.attention = nn.Linear(inherent, h, bias=False)  # W_a
        self.attention_bias = nn.Linear(self.behaviors.cross_dim, 1)  # beta(c_ij)
        self.evolution = AuGruCell(h, h)
        self.aux_net = mlp(h + inherent, config.aux_hidden) if config.aux_weight > 0 else None
        self.din = (
            DinAttention(inherent, self.behaviors.cross_dim, config.din_hidden)
            if config.din_hidden is not None
            else None
        )
        din_width = self.din.out_dim if self.din is not None else 0
        self.tower = mlp(inherent + h + din_width, config.tower_hidden)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category` (history and targets share them)."""
        return self.behaviors.tables()

    def feature_ids(self) -> dict[str, str]:
        """Each feature's id field."""
        return self.behaviors.feature_ids()

    def extract(self, inputs: LifelongInputs, recent: RecentBehaviors) -> torch.Tensor:
        """(T, n, H) the interest extractor's state after each slot (0 before the window)."""
        x = torch.cat([recent.inherent, recent.cross.behavior], dim=-1)  # (T, n, 3D)

        def step(h: torch.Tensor, x_i: torch.Tensor, valid_i: torch.Tensor) -> torch.Tensor:
            return torch.where(valid_i.unsqueeze(-1), self.extractor(x_i, h), h)  # (T, H)

        h0 = x.new_zeros(x.shape[0], self.config.hidden_size)  # (T, H)
        return recur(step, h0, (x, recent.valid))  # (T, n, H)

    def attend(self, states: torch.Tensor, recent: RecentBehaviors) -> torch.Tensor:
        """(T, n) attention of every target to its slots (0 outside the window)."""
        query = self.attention(recent.target)  # (T, H)
        logits = torch.einsum("tnh,th->tn", states, query)
        logits = logits + self.attention_bias(recent.cross.cat()).squeeze(-1)  # (T, n)
        # The lowest finite value, not -inf: exp underflows to exactly 0 beside a valid slot,
        # and a target with an empty window gets a finite row (zeroed below) instead of NaN,
        # whose gradient would be NaN too.
        logits = logits.masked_fill(~recent.valid, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=1)  # (T, n)
        return torch.where(recent.valid, weights, torch.zeros_like(weights))

    def evolve(
        self, states: torch.Tensor, attention: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """(T, H) the AUGRU's final state over the extractor `states` (T, n, H)."""

        def step(
            h: torch.Tensor, s_i: torch.Tensor, a_i: torch.Tensor, valid_i: torch.Tensor
        ) -> torch.Tensor:
            return torch.where(valid_i.unsqueeze(-1), self.evolution(s_i, h, a_i), h)  # (T, H)

        h0 = states.new_zeros(states.shape[0], self.config.hidden_size)  # (T, H)
        return recur(step, h0, (states, attention, valid))[:, -1]  # (T, H)

    def aux_loss(
        self, inputs: LifelongInputs, recent: RecentBehaviors, states: torch.Tensor
    ) -> torch.Tensor:
        """() `aux_weight` × the auxiliary next-behavior loss (see the module docstring)."""
        assert self.aux_net is not None
        t, n = recent.valid.shape
        num_events = inputs.event_inherent.shape[0]
        pairs = recent.valid[:, :-1] & recent.valid[:, 1:]  # (T, n - 1)
        drawn = torch.randint(max(num_events, 1), (t, n - 1), device=recent.index.device)
        next_item = gather_rows(inputs.event_item, recent.index[:, 1:])  # (T, n - 1)
        pairs = pairs & (gather_rows(inputs.event_item, drawn) != next_item)
        negative = gather_rows(inputs.event_inherent, drawn)  # (T, n - 1, 2D)
        h = states[:, :-1]  # (T, n - 1, H)
        positive_logits = self.aux_net(torch.cat([h, recent.inherent[:, 1:]], dim=-1))
        negative_logits = self.aux_net(torch.cat([h, negative], dim=-1))  # (T, n - 1, 1)
        # BCE against 1 and 0: softplus(-logit) + softplus(logit).
        terms = F.softplus(-positive_logits) + F.softplus(negative_logits)  # (T, n - 1, 1)
        terms = torch.where(pairs.unsqueeze(-1), terms, torch.zeros_like(terms))
        count = pairs.sum().clamp(min=1)
        return self.config.aux_weight * terms.sum() / count

    def forward(self, features: CtrFeatures) -> CtrOutput:
        """(T,) logits, and the auxiliary loss in training (its negatives come from the global
        RNG, so evaluation and serving leave it alone and `val/loss` is the BCE alone)."""
        inputs, recent = self.behaviors(features)
        states = self.extract(inputs, recent)  # (T, n, H)
        attention = self.attend(states, recent)  # (T, n)
        interest = self.evolve(states, attention, recent.valid)  # (T, H)
        parts = [recent.target, interest]  # (T, 2D), (T, H)
        if self.din is not None:
            parts.append(
                self.din(recent.target, recent.inherent, recent.cross.cat(), recent.valid)
            )  # (T, 5D)
        logits = self.tower(torch.cat(parts, dim=1)).squeeze(1)  # (T,)
        aux = None
        if self.aux_net is not None and self.training and features.request_ts is None:
            aux = self.aux_loss(inputs, recent, states)  # draws negatives: training only
        return CtrOutput(logits, aux_loss=aux)
