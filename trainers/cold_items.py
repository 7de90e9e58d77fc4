"""Items (and categories) the model never trained on: scored as out-of-vocabulary, and the
out-of-vocabulary row trained on real events.

Vocab id 1 is the out-of-vocabulary row (`pipeline.vocab.OOV_ID`): serving looks unknown raw ids
up there. Two things made such ids score highest (issue 29: an unknown candidate at 0.88, a
request of unknown candidates at 0.98): with `vocab.min_count: 1` no training event ever
reaches row 1, so it keeps its random initialization; and ids the build knows but training
never saw (items first seen after the training period, ids an incremental build appends) keep
theirs too. Both are arbitrary, not "unknown". The CTR task therefore (`ColdItemConfig`):

* **trains the OOV rows on the first days of a share of the items**: an id serving does not
  know is a *new* item, one first seen after the data its export was trained on; so for a
  `share` of the items (chosen by a hash of the item id and the seed, the same in every
  epoch, run and rank), the events of their first `new_item_days` days (`ItemTimes`: the item
  vocab's `first_ts` / `last_ts`) are looked up with item and category id 1, as serving looks
  up an item it does not know (it knows an item's category from the item), keeping their
  labels: as targets (by their request time) and as history events (by their event time), so
  a held-out click stays unknown in the user's later history. The OOV rows learn what the
  model should say of a new item for this user from the labels new items really get, not an
  initialization artifact; and since unknown history events and unknown candidates share one
  row, training shows that an unknown candidate "matching" an unknown event of the history
  (the README's `i-unknown` after `i-new`) is no evidence of a repeat. Only items that live on
  past their new days within training's data are chosen (no item gives its whole training
  life to the OOV row); events before an item's first event (sampled negatives drawn from the
  whole catalog, whatever its time) are not held out. A build whose item vocab has no times
  (made before they were recorded) holds out `share` of the events, at most
  `HASHED_EVENT_SHARE`, by a hash of item and time (the rule before the times);
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

from lifeseq.features.batch import CtrBatch
from lifeseq.features.jagged import Jagged

#: The out-of-vocabulary id of every vocabulary (`pipeline.vocab.OOV_ID`).
OOV_ID = 1
#: Tables whose untrained rows are treated as OOV, and the batch fields that look them up.
TRACKED = {"item": ("item", "target_item"), "category": ("category", "target_category")}
#: Key of the masks in a checkpoint's `lifeseq` section.
CHECKPOINT_KEY = "trained_rows"
#: Hash of the held-out choice: `(item * A + ts * B + seed * C) mod P`, exact in int64; of
#: the held-out items `(item * A + seed * D) mod P` (D large: each seed picks other items).
_P, _A, _B, _C = 2_147_483_647, 1_103_515_245, 2_654_435_761 % 2_147_483_647, 40_503
_D = 1_500_450_271
#: Largest share of the events held out by hash when the build has no item times.
HASHED_EVENT_SHARE = 0.05
#: `first_ts` of an item whose first event is not known: after every event, never "new".
UNKNOWN_FIRST_TS = torch.iinfo(torch.int64).max
_DAY = 86_400


@dataclass
class ColdItemConfig:
    """YAML `model.init_args.cold_items` of the CTR task (see the module docstring).

    Attributes:
        share: share of the items whose first `new_item_days` are looked up as OOV (0 turns it
            off); for a build without item times, of the events (at most `HASHED_EVENT_SHARE`).
        new_item_days: how long an item counts as new: about the time from an item's first
            event until an export that knows it serves (daily exports: 1-2 days), or the
            span an offline evaluation scores after training's data ends.
        untrained_as_oov: evaluate, score offline and export ids that no training batch
            looked up as OOV.
    """

    share: float = 0.5
    new_item_days: float = 7.0
    untrained_as_oov: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not 0.0 <= float(self.share) < 1.0:
            raise ValueError(f"cold_items.share: expected a number in [0, 1), got {self.share!r}")
        if isinstance(self.new_item_days, bool) or not float(self.new_item_days) > 0.0:
            raise ValueError(
                "cold_items.new_item_days: expected a number of days > 0, got "
                f"{self.new_item_days!r}"
            )

    def held_out_share(self, times_known: bool) -> float:
        """`share` of the items when the build has item times; of the events without them, at
        most `HASHED_EVENT_SHARE` (the rule before the times)."""
        share = float(self.share)
        return share if times_known else min(share, HASHED_EVENT_SHARE)

    @property
    def new_item_seconds(self) -> int:
        """`new_item_days` in seconds (the unit of event times)."""
        return int(round(float(self.new_item_days) * _DAY))


@dataclass(frozen=True)
class ItemTimes:
    """Each item id's first and last event times (the build's item vocab).

    Attributes:
        first: (V,) int64 epoch seconds, `UNKNOWN_FIRST_TS` where not known (padding, OOV,
            items of a `--base` built before the times were recorded).
        last: (V,) int64 epoch seconds (any value where `first` is unknown).
        train_end: the first time after training's data (the build's `targets.valid_start`
            for a split by time; None otherwise): later events do not count as the item's
            life after its new days (training must not lean on the valid and test periods).
    """

    first: torch.Tensor
    last: torch.Tensor
    train_end: int | None = None

    @staticmethod
    def read(root: str, num_items: int) -> ItemTimes | None:
        """The times of `root/vocab/item` (columns `first_ts`, `last_ts`) for a table of
        `num_items` rows; None when there is no item vocab or it has no times (a build made
        before they were recorded).

        Raises:
            ValueError: a vocab id is outside the table's rows (naming the vocab).
        """
        import pyarrow.dataset as ds

        from lifeseq.pipeline import storage

        where = storage.join(root, "vocab", "item")
        if not storage.exists(where):
            return None
        fs, path = storage.resolve(where)
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
        if not {"first_ts", "last_ts"} <= set(dataset.schema.names):
            return None
        table = dataset.to_table(columns=["id", "first_ts", "last_ts"])
        ids = torch.from_numpy(table.column("id").to_numpy(zero_copy_only=False).astype("int64"))
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_items):
            raise ValueError(
                f"{where}: item id {int(ids.max())} outside the item table's {num_items} rows "
                "(manifest.vocab.item); rebuild the vocab"
            )
        columns = {}
        for name in ("first_ts", "last_ts"):
            values = table.column(name).fill_null(UNKNOWN_FIRST_TS)
            column = torch.full((num_items,), UNKNOWN_FIRST_TS, dtype=torch.int64)
            column[ids] = torch.from_numpy(values.to_numpy(zero_copy_only=False).astype("int64"))
            columns[name] = column
        return ItemTimes(columns["first_ts"], columns["last_ts"], _train_end(root))

    def to(self, device: torch.device) -> ItemTimes:
        """These times on `device` (the same object when they are there already)."""
        if self.first.device == device:
            return self
        return replace(self, first=self.first.to(device), last=self.last.to(device))

    def new_then(self, item: torch.Tensor, ts: torch.Tensor, seconds: int) -> torch.Tensor:
        """(T,) bool: whether `item` was new at `ts` (both (T,) int64): `ts` within `seconds`
        of its first event, and the item lived on past them in training's data (events
        `seconds` or more after its first, before `train_end`), so holding these events out
        leaves it events to train its own row. The times must be on `item`'s device (`to`)."""
        first = self.first[item]
        last = self.last[item]
        if self.train_end is not None:
            last = last.clamp(max=self.train_end - 1)
        known = first != UNKNOWN_FIRST_TS
        return known & (first <= ts) & (ts - first < seconds) & (last - first >= seconds)


def _train_end(root: str) -> int | None:
    """`targets.valid_start` of the build's manifest when it splits by time, else None."""
    from lifeseq.pipeline import storage

    manifest = storage.join(root, "manifest.json")
    if not storage.exists(manifest):
        return None
    targets = (storage.read_json(manifest).get("config") or {}).get("targets") or {}
    if targets.get("split") != "time" or targets.get("valid_start") is None:
        return None
    return int(targets["valid_start"])


def held_out(
    item: torch.Tensor,
    ts: torch.Tensor,
    share: float,
    seed: int,
    times: ItemTimes | None = None,
    new_item_seconds: int = 7 * _DAY,
) -> torch.Tensor:
    """(T,) bool: which events of `item` at times `ts` (both (T,) int64) are held out for the
    OOV row, a fixed function of its arguments (the same in every epoch, run and rank).

    With `times`: the events of a `share` of the items (by a hash of the id and `seed`) while
    they were new (`ItemTimes.new_then`). Without: a `share` of the events, by a hash of
    (item, ts, seed)."""
    if share <= 0.0 or item.numel() == 0:
        return torch.zeros_like(item, dtype=torch.bool)
    if times is None:
        mixed = ((item % _P) * _A + (ts % _P) * _B + (seed % _P) * _C) % _P
        return mixed.to(torch.float64) < share * _P
    chosen_item = (((item % _P) * _A + (seed % _P) * _D) % _P).to(torch.float64) < share * _P
    return chosen_item & (item > OOV_ID) & times.new_then(item, ts, new_item_seconds)


def hold_out_items(
    batch: CtrBatch,
    share: float,
    seed: int,
    times: ItemTimes | None = None,
    new_item_seconds: int = 7 * _DAY,
) -> CtrBatch:
    """`batch` with the held-out events' (`held_out`) item and category replaced by `OOV_ID`,
    as serving looks up an item it does not know: targets chosen by their request time, history
    events by their event time, so a held-out click is unknown both as a target and later in
    the user's history (labels unchanged). Training thus shows the model what serving shows
    it: unknown candidates next to unknown events in the history, whose shared OOV row (one
    item, one category for every unknown id) says nothing about whether they are the same."""
    if share <= 0.0:
        return batch
    rule = {"share": share, "seed": seed, "times": times, "new_item_seconds": new_item_seconds}
    chosen = held_out(batch.target_item, batch.target_ts, **rule)
    history = batch.history
    events = held_out(history["item"].values, history["ts"].values, **rule)
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
        from lifeseq.trainers.checkpoint import load_tensors, read_checkpoint_tree

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
