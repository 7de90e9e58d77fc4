"""One serving request of a generative model: the user's sequence → the user embedding that
ranks the next item, written so that `torch.export` traces it with a dynamic length.

The sequence is one row of L ≤ `max_len` events (the most recent ones, oldest first), encoded by
the same `GenerativeEncoderUnits` code as training (`LengthGroup.whole_row`: no padding, no
data-dependent shapes), so the embedding equals the trained model's query for that user's next
item (tested). The item table stays outside: the caller looks the rows up in the exported,
memory-mapped table and passes them in.

Inputs (a dict of tensors):

| key | shape | dtype | meaning |
|---|---|---|---|
| `item_emb` | (L, d) | float | item-table rows of the sequence's items |
| `key_ts` | (L,) | int64 | event times |
| `query_ts` | (L,) | int64 | each position's prediction time: the next event's time, and the request time at the last position |

Output: (d,) L2-normalized user embedding (score items by the dot product with their
L2-normalized embeddings, `GenerativeModel.item_table`).
"""

from __future__ import annotations

import torch

from models.generative import GenerativeEncoderUnits, GenerativeModel
from models.jagged_attention import LengthGroup

INPUT_NAMES = ("item_emb", "key_ts", "query_ts")


class GenerativeRequestModel(GenerativeEncoderUnits):
    """The encoder of a trained `GenerativeModel` (shared parameters), scoring one request.

    Args:
        model: the trained model (its embedding collection is not used).
    """

    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.config = model.config
        self.position = model.position
        self.input_dropout = model.input_dropout
        self.encoder = model.encoder
        self.input_names = INPUT_NAMES

    def forward(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        """(d,) user embedding after the last event of the request's sequence (L ≥ 1)."""
        item_emb = request["item_emb"]
        n, device = item_emb.shape[0], item_emb.device
        positions = torch.arange(n, device=device)
        offsets = torch.arange(2, device=device) * n  # [0, L]
        user = self.encode(
            item_emb, offsets, positions, request["key_ts"], request["query_ts"],
            [LengthGroup.whole_row(n, device)],
        )  # fmt: skip
        return user[-1]
