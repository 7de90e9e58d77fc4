"""UBR4CTR (Qin et al., "User Behavior Retrieval for Click-Through Rate Prediction", SIGIR'20):
a GSU whose retrieval query is learned, then attention over what it retrieves.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/ubr4ctr.yaml \
        --data.root OUT --trainer.default_root_dir RUN

**The paper.** Behaviors are documents of feature values (item, category, context such as the
time) in a search engine. A feature-selection module (self-attention over the target's and the
context's feature fields, then a per-field selection probability) samples which fields form
the query; BM25 ranks the behaviors by the query terms they contain, the top K go to an
attention-based prediction module. Top-K retrieval has no gradient, so the selection module is
trained with REINFORCE (reward: the prediction's likelihood of the label).

**Here.** Four fields per target j: its item, its category, and two request-time context
fields, the hour of day and the day of week of its request time (UTC); each behavior has the
same four (its item, category and the hour / weekday of its own time). The query module embeds
the target's fields (item and category rows of the shared tables, the unit's own hour and
weekday tables), adds a learned field-type vector, runs one self-attention layer over the F = 4
fields and maps each to a selection weight `s_jf = sigmoid(w · h_jf + b)` — a soft selection
(weight near 0: field not queried) instead of the paper's sampled one. A behavior matching
field f of the target is a hit for that term; every behavior has exactly one value per field,
so BM25 (term frequency 0/1, equal document lengths) reduces to the sum of the matched terms'
IDF, here weighted by the selection:

    idf_jf = log(1 + (L_j - n_jf + 0.5) / (n_jf + 0.5))   n_jf: events of window j matching f
    r_ij   = sum_f s_jf · idf_jf · [field f of behavior i == field f of target j]

A behavior with `r_ij = 0` (it matches no field the query selects) is never retrieved; among
the hits the top K by `r_ij` (exact ties to the most recent) go to the ESU
(`MultiHeadTargetAttention`, as in SIM, ETA and TWIN). Instead of REINFORCE, the selection is
trained through the ESU: `r_ij` of the retrieved behaviors is added (scaled per head by a
learned `relevance_scale`, 1 at start) to the ESU's logits, so the score that ranked a behavior
also weighs it, and the gradient of the CTR loss reaches the query module through those logits
(a straight-through-style estimate: it moves the weights of the fields whose retrieved matches
the prediction rewards, but says nothing about behaviors left out of the top K, which
REINFORCE's sampling would explore). Item and category ids 0/1 (padding / unknown) never match.
Ids and times are compared exactly: the retrieval itself has no gradient and needs no per-item
cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_positive, check_top_k
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import SearchResult
from lifeseq.models.blocks.target_attention import EsuConfig
from lifeseq.models.blocks.two_stage import RetrievalUnit
from lifeseq.models.blocks.windows import NEG_INF, Chunk, chunked_topk, gather_rows, scan_chunks
from lifeseq.models.interfaces import LongTermOutput, ModelDims

#: The query's fields, in order: the target's item and category, its request's hour of day and
#: day of week.
FIELDS = ("item", "category", "hour", "weekday")
#: Ids below this (padding 0, unknown 1) never match: they say nothing about the item.
FIRST_KNOWN_ID = 2
_HOUR_S, _DAY_S, _EPOCH_WEEKDAY = 3_600, 86_400, 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True)
class Ubr4CtrConfig:
    """YAML `long_term.init_args.config` of `Ubr4Ctr`.

    Attributes:
        top_k: behaviors the GSU retrieves per target.
        chunk: window events matched per target per step.
        esu: the ESU's shape.
    """

    top_k: int = 64
    chunk: int = 1024
    esu: EsuConfig = field(default_factory=EsuConfig)

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk"):
            check_positive(f"Ubr4CtrConfig.{name}", getattr(self, name))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = Ubr4CtrConfig()


def time_fields(ts: torch.Tensor) -> torch.Tensor:
    """(..., 2) int64 hour of day (0..23) and day of week (0 = Monday) of epoch seconds `ts`."""
    hour = torch.div(ts, _HOUR_S, rounding_mode="floor") % 24
    weekday = (torch.div(ts, _DAY_S, rounding_mode="floor") + _EPOCH_WEEKDAY) % 7
    return torch.stack([hour, weekday], dim=-1)


class FieldSelector(nn.Module):
    """UBR4CTR's feature-selection module, made soft: one self-attention layer over the query's
    field embeddings (plus a learned field-type vector), then a sigmoid selection weight per
    field.

    Args:
        dim: width D of every field embedding.
        fields: F.
    """

    def __init__(self, dim: int, fields: int) -> None:
        super().__init__()
        self.field_type = nn.Parameter(torch.randn(fields, dim) * 0.02)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.select = nn.Linear(dim, 1)
        self.scale = 1 / math.sqrt(dim)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """(T, F) selection weights in (0, 1) of (T, F, D) field embeddings."""
        x = fields + self.field_type  # (T, F, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (T, F, D) each
        attention = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)  # (T, F, F)
        h = x + attention @ v  # (T, F, D)
        return torch.sigmoid(self.select(h)).squeeze(-1)  # (T, F)


class Ubr4Ctr(RetrievalUnit):
    """Learned-query term retrieval (BM25 over single-valued fields) → ESU; see the module
    docstring.

    Args:
        dims: the data's sizes.
        config: top-K, chunk and the ESU.
    """

    def __init__(self, dims: ModelDims, config: Ubr4CtrConfig = DEFAULT_CONFIG) -> None:
        check_top_k("Ubr4Ctr", config.top_k, dims.max_history)
        super().__init__(dims, config.esu)
        self.config = config
        d = dims.embedding_dim
        self.hour_embedding = nn.Embedding(24, d)
        self.weekday_embedding = nn.Embedding(7, d)
        for table in (self.hour_embedding, self.weekday_embedding):
            nn.init.normal_(table.weight, std=0.02)
        self.selector = FieldSelector(d, len(FIELDS))
        self.relevance_scale = nn.Parameter(torch.ones(config.esu.heads))

    def fields(self, inputs: LifelongInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, F) the events' and (T, F) the targets' field values; the targets' unknown item and
        category ids are -1 (matching nothing)."""
        events = torch.cat(
            [inputs.event_item.unsqueeze(1), inputs.event_category.unsqueeze(1),
             time_fields(inputs.event_ts)], dim=1,
        )  # (N, F)  # fmt: skip
        ids = torch.stack([inputs.target_item, inputs.target_category], dim=1)  # (T, 2)
        ids = ids.masked_fill(ids < FIRST_KNOWN_ID, -1)
        return events, torch.cat([ids, time_fields(inputs.target_ts)], dim=1)  # (T, F)

    def selection(self, inputs: LifelongInputs, target_fields: torch.Tensor) -> torch.Tensor:
        """(T, F) the query module's selection weights of every target's fields."""
        d = self.hour_embedding.embedding_dim
        embedded = torch.stack(
            [inputs.target_inherent[:, :d], inputs.target_inherent[:, d:],
             self.hour_embedding(target_fields[:, 2]), self.weekday_embedding(target_fields[:, 3])],
            dim=1,
        )  # (T, F, D)  # fmt: skip
        return self.selector(embedded)

    def idf(
        self, inputs: LifelongInputs, event_fields: torch.Tensor, target_fields: torch.Tensor
    ) -> torch.Tensor:
        """(T, F) BM25's IDF of each target's field values over its own window (no gradient)."""
        counts = event_fields.new_zeros(target_fields.shape)  # (T, F)
        for step in scan_chunks(inputs.windows, self.config.chunk):
            hits = self._matches(step, event_fields, target_fields) & step.valid.unsqueeze(-1)
            counts = counts.index_add(0, step.rows, hits.sum(dim=1))  # rows distinct per step
        n = counts.to(torch.float32)
        length = inputs.windows.lengths.to(torch.float32).unsqueeze(1)  # (T, 1)
        return torch.log1p((length - n + 0.5) / (n + 0.5))  # (T, F)

    @staticmethod
    def _matches(
        step: Chunk, event_fields: torch.Tensor, target_fields: torch.Tensor
    ) -> torch.Tensor:
        """(n, C, F) bool: field f of the slice's event equals the row's target's."""
        return event_fields[step.events].unsqueeze(0) == target_fields[step.rows].unsqueeze(1)

    def terms(self, inputs: LifelongInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query: (N, F) event and (T, F) target field values (`fields`) and (T, F) term
        weights `s_jf · idf_jf` (gradient through the selection only)."""
        event_fields, target_fields = self.fields(inputs)
        with torch.no_grad():
            idf = self.idf(inputs, event_fields, target_fields)  # (T, F)
        return event_fields, target_fields, self.selection(inputs, target_fields) * idf

    def search(
        self, inputs: LifelongInputs, event_fields: torch.Tensor, target_fields: torch.Tensor,
        terms: torch.Tensor,
    ) -> SearchResult:  # fmt: skip
        """Top-K hits by `r_ij` (terms detached), ties to the most recent."""
        weights = terms.detach()

        def score(step: Chunk) -> torch.Tensor:
            hits = self._matches(step, event_fields, target_fields)  # (n, C, F)
            relevance = (hits.to(weights.dtype) * weights[step.rows].unsqueeze(1)).sum(dim=-1)
            return relevance.masked_fill(relevance <= 0, NEG_INF)  # (n, C): hits only

        index, scores = chunked_topk(
            score, inputs.windows, self.config.top_k, self.config.chunk, recent_first=True
        )
        return SearchResult(index, scores)

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """The GSU alone: top-K hits of the learned query (the ESU's `query` and `event_keys`
        are not used)."""
        with torch.no_grad():
            return self.search(inputs, *self.terms(inputs))

    @staticmethod
    def relevance(
        index: torch.Tensor, event_fields: torch.Tensor, target_fields: torch.Tensor,
        terms: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """(T, K) `r_ij` of the retrieved behaviors `index` (T, K), with the terms' gradient
        (0 at empty slots)."""
        hits = gather_rows(event_fields, index) == target_fields.unsqueeze(1)  # (T, K, F)
        relevance = (hits.to(terms.dtype) * terms.unsqueeze(1)).sum(dim=-1)  # (T, K)
        return relevance.masked_fill(index < 0, 0.0)

    def forward(self, inputs: LifelongInputs) -> LongTermOutput:
        """(T, out_dim) ESU output over the retrieved behaviors, their relevance added to the
        logits."""
        attention = self.attention
        event_fields, target_fields, terms = self.terms(inputs)
        found = self.search(inputs, event_fields, target_fields, terms)
        index, valid = found.index, found.valid  # (T, K)
        relevance = self.relevance(index, event_fields, target_fields, terms)  # (T, K)
        query = attention.query(inputs.target_inherent)  # (T, H, dh)
        event_keys = attention.keys(inputs.event_inherent)  # (N, H, dh)
        cross = inputs.pair_features(inputs.all_rows(), index)  # (T, K, ...)
        bias = relevance.unsqueeze(-1) * self.relevance_scale  # (T, K, H)
        logits = attention.logits(query, gather_rows(event_keys, index), cross) + bias
        logits = logits.masked_fill(~valid.unsqueeze(-1), NEG_INF)  # (T, K, H)
        null = attention.null_logit.expand(logits.shape[0], 1, -1)  # (T, 1, H): a zero value
        weights = torch.softmax(torch.cat([null, logits], dim=1), dim=1)[:, 1:]  # (T, K, H)
        values = attention.values(gather_rows(inputs.event_inherent, index), cross)
        pooled = torch.einsum("tkh,tkhd->thd", weights, values)  # (T, H, dh)
        width = attention.heads * attention.head_dim
        out = attention.out_proj(pooled.reshape(pooled.shape[0], width))  # (T, out_dim)
        return LongTermOutput(out)
