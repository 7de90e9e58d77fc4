"""Next-item losses over L2-normalized embeddings: sampled softmax and full softmax.

Logits are cosine similarities divided by a temperature (HSTU reference: 0.05). Sampled softmax
scores each position's positive against R negatives: uniform draws from the catalog and/or
positives of other positions in the batch ("in-batch"). A negative equal to the position's own
positive is masked out (its logit is −inf), so the positive never competes with itself.

Negatives are drawn once per batch and shared by all positions (`shared=True`, an (M, R)
matmul), or drawn per position as in the HSTU reference (`shared=False`, M × R lookups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Ids 0 (padding) and 1 (OOV) are never items to predict or sample.
FIRST_ITEM_ID = 2


@dataclass(frozen=True)
class SoftmaxLossConfig:
    """YAML `model.init_args.loss:`.

    Attributes:
        uniform_negatives: negatives drawn uniformly from item ids [2, V).
        in_batch_negatives: negatives drawn from the batch's other positives.
        temperature: logits are cosine / temperature.
        shared: draw negatives once per batch (True) or per position (False, the reference).
        full_softmax: score every item instead of sampling (small catalogs).
    """

    uniform_negatives: int = 128
    in_batch_negatives: int = 0
    temperature: float = 0.05
    shared: bool = True
    full_softmax: bool = False

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


def draw_negatives(
    positives: torch.Tensor, num_items: int, config: SoftmaxLossConfig, rows: int
) -> torch.Tensor:
    """Negative item ids, shape (rows, R) with R = uniform + in-batch negatives.

    Args:
        positives: shape (M,), the batch's positive ids (the in-batch pool).
        num_items: V, rows of the item table (ids 2..V-1 are items).
        config: counts.
        rows: 1 for shared negatives, M for per-position negatives.

    Raises:
        ValueError: a catalog without items (V <= 2) with uniform negatives requested.
    """
    parts = []
    if config.uniform_negatives:
        if num_items <= FIRST_ITEM_ID:
            raise ValueError(f"uniform negatives: the item table has no items (V = {num_items})")
        shape = (rows, config.uniform_negatives)
        parts.append(torch.randint(FIRST_ITEM_ID, num_items, shape, device=positives.device))
    if config.in_batch_negatives:
        shape = (rows, config.in_batch_negatives)
        pick = torch.randint(0, max(positives.numel(), 1), shape, device=positives.device)
        pool = positives if positives.numel() else positives.new_zeros(1)
        parts.append(pool[pick])
    return torch.cat(parts, dim=1)


def sampled_softmax_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negatives: torch.Tensor,
    negative_embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-position sampled softmax loss, shape (M,).

    Args:
        queries: shape (M, d), L2-normalized user embeddings of the labelled positions.
        positives: shape (M,), their next items.
        positive_embeddings: shape (M, d), L2-normalized embeddings of `positives`.
        negatives: shape (1, R) shared or (M, R) per position (`draw_negatives`).
        negative_embeddings: shape (1 or M, R, d), L2-normalized.
        temperature: logits are cosine / temperature.
    """
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature  # (M,)
    if negatives.shape[0] == 1:
        negative_logits = queries @ negative_embeddings[0].T / temperature  # (M, R)
    else:
        negative_logits = torch.einsum("md,mrd->mr", queries, negative_embeddings) / temperature
    collides = negatives == positives.unsqueeze(1)  # (M, R)
    negative_logits = negative_logits.masked_fill(collides, float("-inf"))
    logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - positive_logits


def full_softmax_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    item_embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-position softmax loss over every item, shape (M,).

    Args:
        queries: shape (M, d), L2-normalized.
        positives: shape (M,), ids in [2, V).
        item_embeddings: shape (V, d), L2-normalized table (ids 0 and 1 never score).
        temperature: logits are cosine / temperature.
    """
    logits = queries @ item_embeddings.T / temperature  # (M, V)
    logits[:, :FIRST_ITEM_ID] = float("-inf")
    return torch.nn.functional.cross_entropy(logits, positives, reduction="none")
