"""Items (and categories) the model never trained on: scored as out-of-vocabulary, and the
out-of-vocabulary row trained on real events.

Vocab id 1 is the out-of-vocabulary row (`pipeline.vocab.OOV_ID`): serving looks unknown raw ids
up there. Two things made such ids score highest (issue 29: an unknown candidate at 0.88, a
request of unknown candidates at 0.98): with `vocab.min_count: 1` no training event ever
reaches row 1, so it keeps its random initialization; and ids the build knows but training
never saw (items first seen after the training period, ids an incremental build appends) keep
theirs too. Both are arbitrary, not "unknown". The CTR task therefore (`ColdItemConfig`):

* **trains the OOV rows on a held-out share of real events**: `share` of the training events
  (chosen by a hash of the item and the event's time, so the same ones in every epoch, run and
  rank) are looked up with item and category id 1, as serving looks up an item it does not
  know (it knows an item's category from the item), keeping their labels: as targets (by their
  request time) and as history events (by their event time), so a held-out click stays unknown
  in the user's later history. The OOV rows learn what the model should say of such an item
  for this user, not an initialization artifact; and since unknown history events and unknown
  candidates share one row, training shows that an unknown candidate "matching" an unknown
  event of the history (the README's `i-unknown` after `i-new`) is no evidence of a repeat;
* **evaluates untrained ids as OOV** (`untrained_as_oov`): `TrainedRows` records every item and
  category row a training batch looked up (synced over ranks, saved in the checkpoint under
  `lifeseq.trained_rows`); validation, test and offline scoring look the others up as unknown
  (an untrained item: item and category 1; an untrained category: 1), and `lifeseq export`
  leaves them out of the exported vocabularies, so serving treats them as the unknown ids they
  are for the model (and counts them in the answer's `oov`): the exported scorer equals the
  model's own evaluation (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from features.batch import CtrBatch
from features.jagged import Jagged

#: The out-of-vocabulary id of every vocabulary (`pipeline.vocab.OOV_ID`).
OOV_ID = 1
#: Tables whose untrained rows are treated as OOV, and the batch fields that look them up.
TRACKED = {"item": ("item", "target_item"), "category": ("category", "target_category")}
#: Key of the masks in a checkpoint's `lifeseq` section.
CHECKPOINT_KEY = "trained_rows"
#: Hash of the held-out choice: `(item * A + ts * B + seed * C) mod P`, exact in int64.
_P, _A, _B, _C = 2_147_483_647, 1_103_515_245, 2_654_435_761 % 2_147_483_647, 40_503


@dataclass
class ColdItemConfig:
    """YAML `model.init_args.cold_items` of the CTR task (see the module docstring).

    Attributes:
        share: share of training targets whose item is looked up as OOV (0 turns it off).
        untrained_as_oov: evaluate, score offline and export ids that no training batch
            looked up as OOV.
    """

    share: float = 0.05
    untrained_as_oov: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not 0.0 <= float(self.share) < 1.0:
            raise ValueError(f"cold_items.share: expected a number in [0, 1), got {self.share!r}")


def held_out(item: torch.Tensor, ts: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """(T,) bool: which targets of `item` at request times `ts` (both (T,) int64) are held out
    for the OOV row — a fixed function of (item, ts, seed), so the same in every epoch."""
    if share <= 0.0 or item.numel() == 0:
        return torch.zeros_like(item, dtype=torch.bool)
    mixed = ((item % _P) * _A + (ts % _P) * _B + (seed % _P) * _C) % _P
    return mixed.to(torch.float64) < share * _P


def hold_out_items(batch: CtrBatch, share: float, seed: int) -> CtrBatch:
    """`batch` with the held-out events' item and category replaced by `OOV_ID`, as serving
    looks up an item it does not know: targets chosen by (item, request time), history events
    by (item, event time), so a held-out click is unknown both as a target and later in the
    user's history (labels unchanged). Training thus shows the model what serving shows it:
    unknown candidates next to unknown events in the history, whose shared OOV row (one item,
    one category for every unknown id) says nothing about whether they are the same item."""
    if share <= 0.0:
        return batch
    chosen = held_out(batch.target_item, batch.target_ts, share, seed)
    history = batch.history
    events = held_out(history["item"].values, history["ts"].values, share, seed)
    if not bool(chosen.any()) and not bool(events.any()):
        return batch
    history = {
        **history,
        "item": Jagged(torch.where(events, OOV_ID, history["item"].values),
                       history["item"].lengths),
        "category": Jagged(torch.where(events, OOV_ID, history["category"].values),
                           history["category"].lengths),
    }  # fmt: skip
    return replace(
        batch,
        history=history,
        target_item=torch.where(chosen, OOV_ID, batch.target_item),
        target_category=torch.where(chosen, OOV_ID, batch.target_category),
    )


class TrainedRows:
    """Which rows of the item and category tables a training batch looked up.

    Args:
        sizes: rows of each tracked table (`FeatureSchema.tables[name].num_embeddings`).
    """

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.masks = {name: torch.zeros(int(sizes[name]), dtype=torch.bool) for name in TRACKED}
        self._recorded = False

    def any(self) -> bool:
        """Whether training recorded anything (an untrained model evaluates unchanged). Kept
        as a flag, not a scan: evaluation asks for every batch, and a mask has a row per id."""
        return self._recorded

    def _rescan(self) -> None:
        self._recorded = any(bool(mask.any()) for mask in self.masks.values())

    def _ids(self, batch: CtrBatch, table: str) -> list[torch.Tensor]:
        history, target = TRACKED[table]
        return [batch.history[history].values, getattr(batch, target)]

    def mark(self, batch: CtrBatch) -> None:
        """Record the rows `batch` looks up (history and target ids)."""
        for table, mask in self.masks.items():
            for ids in self._ids(batch, table):
                if ids.numel():
                    if mask.device != ids.device:
                        mask = self.masks[table] = mask.to(ids.device)
                    mask[ids] = True
                    self._recorded = True

    def unknown(self, items: torch.Tensor, categories: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(items, categories) as serving sees them: an untrained item is an unknown item (its
        id and its category `OOV_ID`), an untrained category the OOV category; padding 0 stays."""
        item_mask = self.masks["item"].to(items.device)
        category_mask = self.masks["category"].to(categories.device)
        cold_item = ~item_mask[items] & (items != 0)
        cold_category = (~category_mask[categories] & (categories != 0)) | cold_item
        return (torch.where(cold_item, OOV_ID, items),
                torch.where(cold_category, OOV_ID, categories))  # fmt: skip

    def remap(self, batch: CtrBatch) -> CtrBatch:
        """`batch` with every untrained id as serving looks it up (`unknown`): history events
        and targets alike; the same batch when nothing changes."""
        history = batch.history
        event_item, event_category = self.unknown(
            history["item"].values, history["category"].values
        )
        target_item, target_category = self.unknown(batch.target_item, batch.target_category)
        same = all(torch.equal(a, b) for a, b in (
            (event_item, history["item"].values), (event_category, history["category"].values),
            (target_item, batch.target_item), (target_category, batch.target_category),
        ))  # fmt: skip
        if same:
            return batch
        history = {**history, "item": Jagged(event_item, history["item"].lengths),
                   "category": Jagged(event_category, history["category"].lengths)}  # fmt: skip
        return replace(batch, history=history, target_item=target_item,
                       target_category=target_category)  # fmt: skip

    def sync(self) -> None:
        """Union of every rank's masks (collective; nothing without a process group)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for table, mask in self.masks.items():
            merged = mask.to(torch.uint8)
            dist.all_reduce(merged, op=dist.ReduceOp.MAX)
            self.masks[table] = merged.bool()
        self._rescan()

    def state(self) -> dict[str, torch.Tensor]:
        """The masks as uint8 CPU tensors, for a checkpoint."""
        return {table: mask.to(torch.uint8).cpu() for table, mask in self.masks.items()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore `state()` (tables of another size are refused with the sizes).

        Raises:
            ValueError: a mask's length differs from its table's rows.
        """
        for table, saved in state.items():
            if table not in self.masks:
                continue
            if saved.numel() != self.masks[table].numel():
                raise ValueError(
                    f"{CHECKPOINT_KEY}.{table}: {saved.numel()} rows in the checkpoint, "
                    f"{self.masks[table].numel()} in the table"
                )
            self.masks[table] = saved.to(self.masks[table].device).bool()
        self._rescan()

    @staticmethod
    def for_scoring(ckpt: str | Path) -> TrainedRows | None:
        """The rows to remap when scoring the checkpoint as its evaluation does: None when it
        recorded none, or was trained with `untrained_as_oov: false` (nothing is remapped)."""
        rows = TrainedRows.from_checkpoint(ckpt, remapping_only=True)
        return rows if rows is not None and rows.any() else None

    @staticmethod
    def from_checkpoint(ckpt: str | Path, remapping_only: bool = False) -> TrainedRows | None:
        """The masks a checkpoint directory saved, or None (trained before they existed; with
        `remapping_only`, also when it was trained with `untrained_as_oov: false`)."""
        from trainers.checkpoint import load_tensors, read_checkpoint_tree

        tree, saved = read_checkpoint_tree(ckpt)
        hparams = tree.get("hyper_parameters") or {}
        if remapping_only and not ((hparams.get("cold_items") or {}).get("untrained_as_oov", True)):
            return None
        prefix = f"/lifeseq/{CHECKPOINT_KEY}/"
        keys = {k.removeprefix(prefix): md for k, md in saved.items() if k.startswith(prefix)}
        if set(keys) != set(TRACKED):
            return None
        tensors = {
            name: torch.empty(tuple(md.size), dtype=torch.uint8) for name, md in keys.items()
        }
        load_tensors(ckpt, {prefix + name: t for name, t in tensors.items()})
        rows = TrainedRows({name: t.numel() for name, t in tensors.items()})
        rows.load_state(tensors)
        return rows
