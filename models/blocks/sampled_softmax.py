"""Next-item losses over user and item embeddings: sampled softmax, full softmax, and the
binary and pairwise losses of the sequential-recommendation literature.

Logits are similarities divided by a temperature (HSTU reference: 0.05): cosines with
`similarity: cosine` (the embeddings arrive L2-normalized), raw inner products with `dot`.
Each labelled position's positive (logit s⁺) is scored against R negatives (logits s⁻): uniform
draws from the catalog and/or positives of other positions in the batch ("in-batch"). A
negative equal to the position's own positive is left out, so the positive never competes with
itself.

What a position's loss makes of s⁺ and its negatives' s⁻ (`loss.kind`):

* `softmax` (default): −log softmax of s⁺ among s⁺ and the s⁻ (a colliding negative's logit is
  −inf); `full_softmax: true` scores every item instead of sampling.
* `bce` (SASRec, Kang & McAuley 2018): −log σ(s⁺) − mean log(1 − σ(s⁻)); with
  `uniform_negatives: 1` it is the paper's one sampled negative per position.
* `bpr` (Rendle et al. 2009; GRU4Rec, Hidasi et al. 2016): mean −log σ(s⁺ − s⁻).
* `top1` (GRU4Rec): mean σ(s⁻ − s⁺) + σ(s⁻²) (the second term pulls negatives' scores to 0).

The means run over the position's negatives that differ from its positive; a position whose
negatives all equal it gets no negative term (`bce`: −log σ(s⁺) alone; `bpr`, `top1`: 0).
The sigmoid kinds saturate at large |s|: at a small temperature most pairs give no gradient.

How negatives are drawn (`loss.sampling`):

* `pooled` (default): every position draws its own R negatives from a per-batch pool of
  `loss.pool_size` uniform draws (and, for in-batch negatives, of up to `pool_size` batch
  positives). The logits against the pool are one (M, P) matmul; each position gathers its R.
* `independent`: every position draws R negatives straight from the catalog (the HSTU
  reference; M × R embedding lookups, slow on CPU).
* `shared`: one set of R negatives for all positions (cheapest; learns much more slowly: on
  ML-100K, HSTU's validation NDCG@10 after 5 epochs was 0.013 shared vs 0.051 independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLING = ("pooled", "independent", "shared")
#: How a user embedding scores an item (`SoftmaxLossConfig.similarity`).
SIMILARITIES = ("cosine", "dot")
#: `loss.kind` choices (see the module docstring).
KINDS = ("softmax", "bce", "bpr", "top1")


#: Ids 0 (padding) and 1 (OOV) are never items to predict or sample.
FIRST_ITEM_ID = 2


@dataclass(frozen=True)
class SoftmaxLossConfig:
    """YAML `model.init_args.loss:`.

    Attributes:
        uniform_negatives: negatives drawn uniformly from item ids [2, V).
        in_batch_negatives: negatives drawn from the batch's other positives.
        temperature: logits are similarity / temperature.
        sampling: `pooled`, `independent` or `shared` (see the module docstring).
        pool_size: candidates per batch and kind in `pooled` sampling (>= the negatives).
        full_softmax: score every item instead of sampling (small catalogs; kind `softmax`).
        full_softmax_max_items: the largest item table (rows) full softmax is built for: every
            labelled position scores every item, so a step holds (batch × max_len) × items
            logits and their gradient — at 128 × 200 positions and 10^5 items, 20 GB. A larger
            catalog is refused at start-up (`catalog_error`) instead of running out of memory.
        kind: `softmax`, `bce`, `bpr` or `top1` (see the module docstring).
        similarity: how a user embedding scores an item: `cosine` (both L2-normalized, the
            HSTU reference) or `dot` (raw inner product, as RecBole's models: an item's norm
            can carry its popularity). The model is built with it and serves with it.
    """

    uniform_negatives: int = 128
    in_batch_negatives: int = 0
    temperature: float = 0.05
    sampling: str = "pooled"
    pool_size: int = 2048
    full_softmax: bool = False
    full_softmax_max_items: int = 50_000
    kind: str = "softmax"
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("uniform_negatives", "in_batch_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"loss.{name}: expected an int >= 0, got {value!r}")
        if not self.full_softmax and self.uniform_negatives + self.in_batch_negatives < 1:
            raise ValueError(
                "loss: uniform_negatives + in_batch_negatives must be >= 1 (or full_softmax: true)"
            )
        if not self.temperature > 0:
            raise ValueError(f"loss.temperature: expected > 0, got {self.temperature}")
        if self.sampling not in SAMPLING:
            raise ValueError(
                f"loss.sampling: expected one of {list(SAMPLING)}, got {self.sampling!r}"
            )
        most = max(self.uniform_negatives, self.in_batch_negatives)
        if self.sampling == "pooled" and self.pool_size < most:
            raise ValueError(
                f"loss.pool_size: expected >= the negatives drawn from it ({most}), "
                f"got {self.pool_size}"
            )
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"loss.similarity: expected one of {list(SIMILARITIES)}, got {self.similarity!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"loss.kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if (
            not isinstance(self.full_softmax_max_items, int)
            or isinstance(self.full_softmax_max_items, bool)
            or self.full_softmax_max_items < 1
        ):
            raise ValueError(
                "loss.full_softmax_max_items: expected an int >= 1, got "
                f"{self.full_softmax_max_items!r}"
            )
        if self.full_softmax and self.kind != "softmax":
            raise ValueError(
                f"loss.full_softmax: true needs loss.kind: softmax, got kind {self.kind!r}; set "
                "full_softmax: false (negatives are sampled) or kind: softmax"
            )

    def catalog_error(self, item_rows: int) -> str | None:
        """Why full softmax cannot be trained over an item table of `item_rows` rows (more
        than `full_softmax_max_items`), naming both numbers and what to set; None when it can
        (or negatives are sampled)."""
        if not self.full_softmax or item_rows <= self.full_softmax_max_items:
            return None
        return (
            f"loss.full_softmax: true scores all {item_rows:,} item rows at every labelled "
            f"position, more than loss.full_softmax_max_items ({self.full_softmax_max_items:,}).\n"
            "What fits: --model.init_args.loss.full_softmax false (sampled negatives, for large "
            "catalogs), or raise --model.init_args.loss.full_softmax_max_items if the memory "
            "for (batch × max_len) × items logits is there"
        )


@dataclass
class Negatives:
    """Sampled negatives of a batch with M labelled positions.

    Attributes:
        ids: shape (1, C) candidates shared by every position (`pooled`, `shared`) or (M, R)
            per position (`independent`).
        picks: `pooled` only: shape (M, R), column of `ids` each position uses; else None.
    """

    ids: torch.Tensor
    picks: torch.Tensor | None = None


def _uniform(num_items: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if num_items <= FIRST_ITEM_ID:
        raise ValueError(f"uniform negatives: the item table has no items (V = {num_items})")
    return torch.randint(FIRST_ITEM_ID, num_items, shape, device=device)


def _from_batch(positives: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    pool = positives if positives.numel() else positives.new_zeros(1)
    return pool[torch.randint(0, pool.numel(), shape, device=positives.device)]


def draw_negatives(positives: torch.Tensor, num_items: int, config: SoftmaxLossConfig) -> Negatives:
    """Negatives for a batch whose labelled positions have next items `positives` (M,).

    Args:
        positives: shape (M,), the batch's positive ids (the in-batch source).
        num_items: V, rows of the item table (ids 2..V-1 are items).
        config: counts and sampling mode.

    Raises:
        ValueError: a catalog without items (V <= 2) with uniform negatives requested.
    """
    m, device = positives.shape[0], positives.device
    counts = (config.uniform_negatives, config.in_batch_negatives)
    if config.sampling == "pooled":
        pools = (
            config.pool_size if counts[0] else 0,
            min(config.pool_size, max(m, 1)) if counts[1] else 0,
        )
        ids = [_uniform(num_items, (1, pools[0]), device)] if pools[0] else []
        ids += [_from_batch(positives, (1, pools[1]))] if pools[1] else []
        picks = [torch.randint(0, pools[0], (m, counts[0]), device=device)] if counts[0] else []
        if counts[1]:
            picks.append(pools[0] + torch.randint(0, pools[1], (m, counts[1]), device=device))
        return Negatives(torch.cat(ids, dim=1), torch.cat(picks, dim=1))
    rows = 1 if config.sampling == "shared" else m
    parts = [_uniform(num_items, (rows, counts[0]), device)] if counts[0] else []
    parts += [_from_batch(positives, (rows, counts[1]))] if counts[1] else []
    return Negatives(torch.cat(parts, dim=1))


def sampled_logits(
    queries: torch.Tensor,
    positives: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negatives: Negatives,
    negative_embeddings: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of each labelled position's positive and negatives.

    Args:
        queries: shape (M, d), user embeddings of the labelled positions (L2-normalized with
            similarity `cosine`, as every embedding here).
        positives: shape (M,), their next items.
        positive_embeddings: shape (M, d), embeddings of `positives`.
        negatives: from `draw_negatives`.
        negative_embeddings: shape (*negatives.ids.shape, d).
        temperature: logits are similarity / temperature.

    Returns:
        (positive logits (M,), negative logits (M, R), collides (M, R) bool: the negative is
        the position's own positive).
    """
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature  # (M,)
    ids = negatives.ids
    if ids.shape[0] == 1:  # one candidate set for every position
        negative_logits = queries @ negative_embeddings[0].T / temperature  # (M, C)
        if negatives.picks is not None:
            negative_logits = negative_logits.gather(1, negatives.picks)  # (M, R)
            ids = ids[0][negatives.picks]
    else:
        negative_logits = torch.einsum("md,mrd->mr", queries, negative_embeddings) / temperature
    collides = ids == positives.unsqueeze(1)  # (M, R)
    return positive_logits, negative_logits, collides


def sampled_softmax_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negatives: Negatives,
    negative_embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-position sampled softmax loss, shape (M,) (arguments as `sampled_logits`)."""
    return softmax_loss(
        *sampled_logits(
            queries, positives, positive_embeddings, negatives, negative_embeddings, temperature
        )
    )


def softmax_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor, collides: torch.Tensor
) -> torch.Tensor:
    """Sampled softmax, shape (M,): −log softmax of s⁺ among s⁺ and the s⁻.

    Args:
        positive_logits: shape (M,).
        negative_logits: shape (M, R).
        collides: shape (M, R) bool, negatives left out (their logit is −inf).
    """
    negative_logits = negative_logits.masked_fill(collides, float("-inf"))
    logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - positive_logits


def _mean_over_negatives(terms: torch.Tensor, collides: torch.Tensor) -> torch.Tensor:
    """(M, R) per-negative terms → (M,) their mean over the non-colliding negatives (0 where
    none is left; a colliding term never reaches the value or the gradient)."""
    kept = (~collides).sum(1).clamp(min=1)  # (M,)
    return terms.masked_fill(collides, 0.0).sum(1) / kept


def bce_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor, collides: torch.Tensor
) -> torch.Tensor:
    """SASRec's binary cross-entropy, shape (M,): −log σ(s⁺) − mean log(1 − σ(s⁻)) (arguments
    as `softmax_loss`; colliding negatives are left out of the mean)."""
    negative_terms = F.softplus(negative_logits)  # −log(1 − σ(s⁻)), (M, R)
    return F.softplus(-positive_logits) + _mean_over_negatives(negative_terms, collides)


def bpr_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor, collides: torch.Tensor
) -> torch.Tensor:
    """BPR, shape (M,): mean over negatives of −log σ(s⁺ − s⁻) (arguments as `bce_loss`)."""
    terms = F.softplus(negative_logits - positive_logits.unsqueeze(1))  # (M, R)
    return _mean_over_negatives(terms, collides)


def top1_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor, collides: torch.Tensor
) -> torch.Tensor:
    """GRU4Rec's TOP1, shape (M,): mean over negatives of σ(s⁻ − s⁺) + σ(s⁻²) (arguments as
    `bce_loss`)."""
    terms = torch.sigmoid(negative_logits - positive_logits.unsqueeze(1)) + torch.sigmoid(
        negative_logits.square()
    )  # (M, R)
    return _mean_over_negatives(terms, collides)


def sampled_loss(
    kind: str,
    positive_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    collides: torch.Tensor,
) -> torch.Tensor:
    """Per-position loss of `kind` (`SoftmaxLossConfig.kind`) from `sampled_logits`' output,
    shape (M,) (arguments as `softmax_loss`).

    Raises:
        ValueError: an unknown `kind`.
    """
    logits = (positive_logits, negative_logits, collides)
    if kind == "softmax":
        return softmax_loss(*logits)
    if kind == "bce":
        return bce_loss(*logits)
    if kind == "bpr":
        return bpr_loss(*logits)
    if kind == "top1":
        return top1_loss(*logits)
    raise ValueError(f"loss.kind: expected one of {list(KINDS)}, got {kind!r}")


def full_softmax_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    item_embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-position softmax loss over every item, shape (M,).

    Args:
        queries: shape (M, d) (L2-normalized with similarity `cosine`, as the table).
        positives: shape (M,), ids in [2, V).
        item_embeddings: shape (V, d), the item table (ids 0 and 1 never score).
        temperature: logits are similarity / temperature.
    """
    logits = queries @ item_embeddings.T / temperature  # (M, V)
    logits[:, :FIRST_ITEM_ID] = float("-inf")
    return torch.nn.functional.cross_entropy(logits, positives, reduction="none")
