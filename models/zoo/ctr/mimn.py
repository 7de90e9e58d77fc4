"""MIMN (Pi et al., "Practice on Long Sequential User Behavior Modeling for Click-Through Rate
Prediction", KDD'19): a user-interest memory written event by event (an NTM), a memory
induction unit (MIU) that follows how each interest evolves, and target attention over both.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/mimn.yaml \\
        --data.root OUT --trainer.default_root_dir RUN

The state of a user (`initial_state`; every tensor per user, m = `slots`):

    controller h (c)   read r (d_m)   memory M (m, d_m)   miu S (m, d_s)   usage g (m)

One event e = [item_emb, category_emb, behavior_emb] (3D) updates it (`update_state`, the
paper's NTM step):

    h'        = GRUCell([e, r], h)                                   controller
    k_r, β_r  ; k_w, β_w ; erase ε ; add a    = linear maps of h'    (β = 1 + softplus)
    w_r(i)    = softmax_i(β_r · cos(k_r, M(i)))                      content addressing
    w_w(i)    = softmax_i(β_w · cos(k_w, M(i)))
    w̃_w       = w_w ⊙ P / Σ(w_w ⊙ P),  P = softmax(W_g · g/Σg)       utilization re-balancing
    g'        = g + w̃_w                                              (`utilization: true`)
    r'        = Σ_i w_r(i) M(i)                                      read
    M'(i)     = M(i) ⊙ (1 − w̃_w(i) ε) + w̃_w(i) a                     erase / add write
    S'(i)     = GRUCell([M'(i), e], S(i))  for the `miu_top_k` slots of largest w_r (MIU),
                S(i) elsewhere

A target t = [item_emb, category_emb] (2D) is scored from its user's state
(`score_from_state`): queries q_M = W_M t and q_S = W_S t attend over the memory slots and over
the MIU slots (scaled dot product, softmax over the m slots), and an MLP tower reads
`[t, read_M, q_M ⊙ read_M, read_S, q_S ⊙ read_S, h]` (the products as in DIN's unit).

Choices, where the paper leaves room:

* MIU slots are picked by the **read** weights, as the paper's MIU does, top-k as a mask
  `w_r >= k-th largest`: exact ties select every tied slot (the same set in eager and exported
  programs). `miu_top_k = slots` updates every slot.
* The re-balancing reads the *normalized* accumulated usage g/Σg (the paper's W_g · g grows
  with the history's length and saturates the softmax) and renormalizes w̃_w to sum 1. The
  paper's variance penalty on g is `utilization_weight` × the variance of the usage *shares*
  g/Σg (`usage_penalty`, scale-free in the history's length), returned as
  `CtrOutput.aux_loss`; off (0) by default.
* Memory starts from a learned M_0 (distinct slots, so addressing is not tied at t = 0); the
  erase gate starts near 0.05 (bias −3: a slot keeps ~30% of its content after 200 writes
  instead of ~0 at sigmoid(0)) and the add vector with no constant.
* No DIN and no time features: the state must not depend on the request, so that serving
  keeps it per user and updates it per event.

Causality: target j's memory reads the last `max_events` events of its window `[lo_j, hi_j)`
(`models.blocks.windows.recent`: a fixed n = `max_events` steps, invalid steps — a window
shorter than n — leave the state unchanged), never an event at or after `hi_j`. Targets whose
windows read the same events share one memory run. Training runs the steps as a Python loop;
`torch.export` traces them as one `scan` of the same step (the request program, with dynamic
history sizes). Cost: n steps of O(windows × m × d) each, so keep `max_events` in the
hundreds on CPU.

Serving (`models.ctr.CtrRecommender.serving_spec`): beside the request program, the export holds
`update` (`update_state`, one event per user) and `score_state` (`score_from_state`) and the
initial state, so a user's state is updated per event and never re-reads the history. A state
after N ≤ `max_events` events scores exactly as the model on the whole history; beyond that,
the state keeps every event while training read the last `max_events` (the paper's UIC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_positive, check_widths
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.mlp import mlp
from lifeseq.models.blocks.windows import TargetWindows, gather_rows, recent
from lifeseq.models.ctr import item_category_tables
from lifeseq.models.ctr_features import CtrEvents, CtrFeatures, CtrOutput, CtrTargets
from lifeseq.models.interfaces import CtrModel, ModelDims
from lifeseq.pipeline.compat import scan as torch_scan

#: Embedding features → the id field each looks up (history and targets share the tables).
FEATURES = {
    "history_item": "event_item",
    "history_category": "event_category",
    "target_item": "target_item",
    "target_category": "target_category",
}
#: Initial bias of the erase gate (sigmoid(-3) ≈ 0.05).
ERASE_BIAS = -3.0


@dataclass(frozen=True)
class MimnConfig:
    """YAML `model.init_args.config` of `Mimn`.

    Attributes:
        max_events: events of each target's window the memory reads (the most recent).
        slots: memory slots m (of the NTM and of the MIU).
        memory_dim: width of a memory slot d_m.
        controller_dim: width of the controller GRU c.
        miu_dim: width of an MIU slot d_s.
        miu_top_k: slots the MIU updates per event (largest read weights).
        utilization: re-balance the write weights by the slots' usage (the paper's memory
            utilization regularization, see the module docstring).
        utilization_weight: λ of the usage-variance penalty added to the loss (0: none).
        tower_hidden: hidden widths of the tower MLP.
    """

    max_events: int = 256
    slots: int = 8
    memory_dim: int = 32
    controller_dim: int = 32
    miu_dim: int = 32
    miu_top_k: int = 4
    utilization: bool = True
    utilization_weight: float = 0.0
    tower_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        for name in ("max_events", "slots", "memory_dim", "controller_dim", "miu_dim", "miu_top_k"):
            check_positive(f"MimnConfig.{name}", getattr(self, name))
        if self.miu_top_k > self.slots:
            raise ValueError(
                f"MimnConfig.miu_top_k: expected at most slots ({self.slots}), got {self.miu_top_k}"
            )
        if not isinstance(self.utilization, bool):
            raise ValueError(f"MimnConfig.utilization: expected a bool, got {self.utilization!r}")
        weight = self.utilization_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise ValueError(
                f"MimnConfig.utilization_weight: expected a float >= 0, got {weight!r}"
            )
        widths = check_widths("MimnConfig.tower_hidden", self.tower_hidden)
        object.__setattr__(self, "tower_hidden", widths)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = MimnConfig()


def _cosine_weights(
    key: torch.Tensor, strength: torch.Tensor, memory: torch.Tensor
) -> torch.Tensor:
    """(B, m) content addressing: softmax over slots of strength × cos(key, slot).

    Args:
        key: (B, d_m).
        strength: (B, 1) sharpening β ≥ 1.
        memory: (B, m, d_m).
    """
    similarity = torch.einsum(
        "bd,bmd->bm",
        nn.functional.normalize(key, dim=-1, eps=1e-6),
        nn.functional.normalize(memory, dim=-1, eps=1e-6),
    )  # (B, m)
    return torch.softmax(strength * similarity, dim=-1)


class Mimn(CtrModel):
    """See the module docstring.

    Args:
        dims: the data's sizes.
        config: memory, MIU and tower settings (None: the defaults).
    """

    incremental = True
    reads_far_history = True

    def __init__(self, dims: ModelDims, config: MimnConfig | None = DEFAULT_CONFIG) -> None:
        super().__init__()
        config = DEFAULT_CONFIG if config is None else config
        self.config = config
        self.dims = dims
        d, m, dm = dims.embedding_dim, config.slots, config.memory_dim
        c, ds = config.controller_dim, config.miu_dim
        event_dim, target_dim = 3 * d, 2 * d
        self.behavior_embedding = nn.Embedding(dims.behavior_rows, d)
        nn.init.normal_(self.behavior_embedding.weight, std=0.02)
        self.controller = nn.GRUCell(event_dim + dm, c)
        # [read key | write key | erase | add | read strength | write strength]
        self.heads = nn.Linear(c, 4 * dm + 2)
        with torch.no_grad():
            # Erase little at first (a slot keeps ~30% of its content after 200 writes), and add
            # no constant (it would pile up the same vector in every user's memory).
            self.heads.bias[2 * dm : 3 * dm].fill_(ERASE_BIAS)
            self.heads.bias[3 * dm : 4 * dm].zero_()
        self.usage_gate = nn.Linear(m, m)  # W_g of the re-balancing
        self.initial_memory = nn.Parameter(torch.randn(m, dm) / math.sqrt(dm))
        self.miu = nn.GRUCell(dm + event_dim, ds)
        self.memory_query = nn.Linear(target_dim, dm, bias=False)
        self.miu_query = nn.Linear(target_dim, ds, bias=False)
        self.tower = mlp(target_dim + 2 * dm + 2 * ds + c, config.tower_hidden)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category`, each serving the history and the targets."""
        return item_category_tables(self.dims)

    def feature_ids(self) -> dict[str, str]:
        """Each feature's id field."""
        return dict(FEATURES)

    # --- the state ------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The state of `batch_size` users with no events (see the module docstring)."""
        cfg, like = self.config, self.initial_memory
        m = cfg.slots
        return {
            "controller": like.new_zeros(batch_size, cfg.controller_dim),
            "read": like.new_zeros(batch_size, cfg.memory_dim),
            "memory": self.initial_memory.expand(batch_size, m, cfg.memory_dim).contiguous(),
            "miu": like.new_zeros(batch_size, m, cfg.miu_dim),
            "usage": like.new_zeros(batch_size, m),
        }

    def event_vectors(
        self, item_rows: torch.Tensor, category_rows: torch.Tensor, behavior: torch.Tensor
    ) -> torch.Tensor:
        """(..., 3D) the events' `[item_emb, category_emb, behavior_emb]` from (..., D) rows and
        (...) behavior ids."""
        return torch.cat([item_rows, category_rows, self.behavior_embedding(behavior)], dim=-1)

    def update_state(
        self, state: dict[str, torch.Tensor], event: CtrEvents
    ) -> dict[str, torch.Tensor]:
        """Each of B users' state after one more event (the step the forward loop runs)."""
        e = event.embedded
        x = self.event_vectors(e["history_item"], e["history_category"], event.behavior)
        return self.step(state, x)

    def step(
        self, state: dict[str, torch.Tensor], x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One NTM + MIU step (see the module docstring).

        Args:
            state: B users' states.
            x: (B, 3D) event vectors (`event_vectors`).
            valid: (B,) bool, False where the step must leave the state unchanged; None: all.

        Returns:
            The B new states.
        """
        cfg = self.config
        dm = cfg.memory_dim
        memory = state["memory"]  # (B, m, d_m)
        h = self.controller(torch.cat([x, state["read"]], dim=-1), state["controller"])  # (B, c)
        read_key, write_key, erase, add, strength = self.heads(h).split([dm, dm, dm, dm, 2], -1)
        strength = 1.0 + nn.functional.softplus(strength)  # (B, 2)
        w_read = _cosine_weights(read_key, strength[:, :1], memory)  # (B, m)
        w_write = _cosine_weights(write_key, strength[:, 1:], memory)  # (B, m)
        usage = state["usage"]
        if cfg.utilization:
            share = usage / usage.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, m)
            w_write = w_write * torch.softmax(self.usage_gate(share), dim=-1)
            w_write = w_write / w_write.sum(-1, keepdim=True).clamp(min=1e-12)
        read = torch.einsum("bm,bmd->bd", w_read, memory)  # (B, d_m)
        w = w_write.unsqueeze(-1)  # (B, m, 1)
        erase, add = torch.sigmoid(erase).unsqueeze(1), torch.tanh(add).unsqueeze(1)  # (B, 1, d_m)
        written = memory * (1 - w * erase) + w * add  # (B, m, d_m)
        b, m = w_read.shape
        miu_in = torch.cat([written, x.unsqueeze(1).expand(-1, m, -1)], dim=-1)  # (B, m, ·)
        miu = self.miu(
            miu_in.reshape(b * m, miu_in.shape[-1]), state["miu"].reshape(b * m, cfg.miu_dim)
        ).view(b, m, cfg.miu_dim)  # (B, m, d_s)
        kth = torch.topk(w_read, cfg.miu_top_k, dim=-1).values[:, -1:]  # (B, 1)
        miu = torch.where((w_read >= kth).unsqueeze(-1), miu, state["miu"])
        new = {"controller": h, "read": read, "memory": written, "miu": miu,
               "usage": usage + w_write}  # fmt: skip
        if valid is None:
            return new
        return {
            k: torch.where(valid.view(-1, *([1] * (v.dim() - 1))), v, state[k])
            for k, v in new.items()
        }

    def run(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The states after n steps from the initial state.

        Args:
            x: (B, n, 3D) event vectors, oldest first.
            valid: (B, n) bool; invalid steps leave the state unchanged.

        Returns:
            The B states.
        """
        state = self.initial_state(x.shape[0])
        if torch.compiler.is_exporting():
            # One traced step instead of n unrolled ones; the same `step`.
            scan = torch_scan()

            def body(
                carry: dict[str, torch.Tensor], xs: tuple[torch.Tensor, torch.Tensor]
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
                out = self.step(carry, xs[0], xs[1])
                return out, out["read"].clone()

            state, _ = scan(body, state, (x.transpose(0, 1), valid.transpose(0, 1)))
            return state
        # Eagerly, skip the steps no row reads (windows shorter than n: a prefix) and the mask
        # where every row reads: both leave the result bit for bit unchanged. A batch with no
        # live step still runs one, which keeps every weight on the graph (DDP).
        live = valid.any(0).nonzero().flatten().tolist() or [0]
        full = valid.all(0).tolist()
        for i in live:
            state = self.step(state, x[:, i], None if full[i] else valid[:, i])
        return state

    # --- scoring --------------------------------------------------------------------------

    def score_from_state(self, state: dict[str, torch.Tensor], targets: CtrTargets) -> torch.Tensor:
        """(T,) logits of targets from their users' states (name → (T, ...))."""
        e = targets.embedded
        t = torch.cat([e["target_item"], e["target_category"]], dim=-1)  # (T, 2D)
        parts = [t]
        for query, slots in ((self.memory_query, state["memory"]), (self.miu_query, state["miu"])):
            q = query(t)  # (T, w)
            scores = torch.einsum("tw,tmw->tm", q, slots) / math.sqrt(q.shape[-1])
            read = torch.einsum("tm,tmw->tw", torch.softmax(scores, dim=-1), slots)  # (T, w)
            parts += [read, q * read]
        parts.append(state["controller"])
        return self.tower(torch.cat(parts, dim=-1)).squeeze(-1)  # (T,)

    def window_states(self, features: CtrFeatures) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The memory of every distinct window read (the last `max_events` events of a target's
        window; targets reading the same events share one run).

        Returns:
            (state, owner): U runs' states (name → (U, ...)) and (T,) each target's run.
        """
        windows = features.windows
        n = self.config.max_events
        if windows.whole:  # one request: every candidate reads the same events
            runs = TargetWindows(windows.lo[:1], windows.hi[:1], windows.num_events, whole=True)
            owner = torch.zeros_like(windows.lo)  # (T,)
        else:
            start = torch.maximum(windows.lo, windows.hi - n)
            spans, owner = torch.unique(
                torch.stack([start, windows.hi], dim=1), dim=0, return_inverse=True
            )  # (U, 2), (T,)
            runs = TargetWindows(spans[:, 0], spans[:, 1], windows.num_events)
        index, valid = recent(runs, n)  # (U, n)
        e = features.embedded
        events = self.event_vectors(
            e["history_item"], e["history_category"], features.event_behavior
        )  # (N, 3D)
        return self.run(gather_rows(events, index), valid), owner

    def forward(self, features: CtrFeatures) -> CtrOutput:
        """(T,) logits: each target's memory over the last `max_events` events of its window."""
        state, owner = self.window_states(features)
        targets = CtrTargets(
            item=features.target_item,
            category=features.target_category,
            ts=features.target_ts,
            embedded=features.embedded,
        )
        logits = self.score_from_state({k: v[owner] for k, v in state.items()}, targets)
        aux_loss = None
        if self.config.utilization_weight > 0 and not torch.compiler.is_exporting():
            aux_loss = self.config.utilization_weight * usage_penalty(state["usage"])
        return CtrOutput(logits, aux_loss=aux_loss)


def usage_penalty(usage: torch.Tensor) -> torch.Tensor:
    """() mean over runs of Σ_i (g_i/Σg − 1/m)²: how unevenly a run's writes used the m slots
    (0 when even); runs that wrote nothing count 0, no run gives 0.

    Args:
        usage: (U, m) accumulated write weights g of U runs.
    """
    total = usage.sum(-1, keepdim=True)  # (U, 1)
    share = usage / total.clamp(min=1e-6)
    spread = ((share - 1.0 / usage.shape[-1]) ** 2).sum(-1) * (total.squeeze(-1) > 0)  # (U,)
    return spread.sum() / max(usage.shape[0], 1)
