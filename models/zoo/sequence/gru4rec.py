"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR'16): a GRU over each row's item embeddings, as in RecBole's `GRU4Rec`.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/gru4rec.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Per row, on the input features x (item rows, with embedding dropout: `ItemOnly`, the config's
input features — the recurrence carries the order, so no position table):

    h_1..h_L = GRU(x_1..x_L)        # `layers` layers of width `hidden_size`, no bias
    out_i    = W · h_i              # back to the item space d

Causal by construction: h_i reads x_1..x_i. Rows of a batch are padded to the longest and
packed (`pack_padded_sequence`), so padding never enters a row's state; a serving request (one
row) runs the same recurrence as a `scan` over time, which `torch.export` traces with a dynamic
length (`scan_row`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lifeseq.models.blocks.checks import check_dropout, check_positive
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows
from lifeseq.pipeline.compat import scan as torch_scan


@dataclass(frozen=True)
class Gru4RecConfig:
    """YAML `encoder.init_args.config` of `Gru4Rec`.

    Attributes:
        hidden_size: GRU width.
        layers: stacked GRU layers.
        dropout: dropout between GRU layers (with `layers` > 1).
    """

    hidden_size: int = 64
    layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers"):
            check_positive(f"Gru4RecConfig.{name}", getattr(self, name))
        check_dropout("Gru4RecConfig.dropout", self.dropout)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = Gru4RecConfig()


class Gru4Rec(SequenceEncoder):
    """A GRU over each row, projected back to width d.

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the recurrence.
    """

    causal = True

    def __init__(self, dims: ModelDims, config: Gru4RecConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        d = dims.embedding_dim
        self.gru = nn.GRU(
            d, config.hidden_size, config.layers, bias=False, batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )  # fmt: skip
        self.output = nn.Linear(config.hidden_size, d)

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        if rows.whole_row:
            return self.output(self.scan_row(x))  # (L, d)
        out = x.new_zeros(x.shape[0], self.config.hidden_size)  # (N, h)
        if x.shape[0] == 0:  # a padding batch: keep every weight on the graph (DDP)
            unused = self.gru(x.new_zeros(1, 1, x.shape[1]))[0].sum() + x.sum()
            return self.output(out + 0 * unused)
        lengths = rows.lengths
        longest = int(lengths.max())
        for group in rows.length_groups(longest):  # the rows padded to the longest
            padded = group.gather(x)  # (b, n, d)
            packed = pack_padded_sequence(
                padded, lengths[group.rows].cpu(), batch_first=True, enforce_sorted=False
            )
            states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)  # (b, n', h)
            valid = group.valid[:, : states.shape[1]]
            out = out.index_put((group.index[:, : states.shape[1]][valid],), states[valid])
        return self.output(out)  # (N, d)

    def scan_row(self, x: torch.Tensor) -> torch.Tensor:
        """The GRU over one row x (L, d) → (L, h), as `torch.export` traces it with a dynamic L
        (a `scan` over time; `nn.GRU` specializes L): r, z, n gates of `nn.GRU` without bias,
        `h' = (1 − z) ⊙ n + z ⊙ h`. Equal to `self.gru` on the row (tested by export == eager)."""
        scan = torch_scan()

        h = self.config.hidden_size
        for layer in range(self.config.layers):
            w_ih = getattr(self.gru, f"weight_ih_l{layer}")  # (3h, in): [r | z | n]
            w_hh = getattr(self.gru, f"weight_hh_l{layer}")  # (3h, h)

            def step(
                state: torch.Tensor, gates_x: torch.Tensor, w_hh: torch.Tensor = w_hh
            ) -> tuple[torch.Tensor, torch.Tensor]:
                gates_h = state @ w_hh.T  # (3h,)
                r = torch.sigmoid(gates_x[:h] + gates_h[:h])
                z = torch.sigmoid(gates_x[h : 2 * h] + gates_h[h : 2 * h])
                n = torch.tanh(gates_x[2 * h :] + r * gates_h[2 * h :])
                new = (1 - z) * n + z * state
                return new, new.clone()

            _, x = scan(step, x.new_zeros(h), x @ w_ih.T)  # (L, h)
        return x
