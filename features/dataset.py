"""Iterable dataset over WebDataset shards: exactly-once sharding, equal batch counts, safe reads.

Usage (one rank of a job; rank and world size from `torch.distributed` when not given):

    ds = LifeseqDataset.from_manifest("OUT", "train", view="ctr", batch_size=64, num_workers=3)
    loader = LifeseqDataLoader(ds)          # batch_size=None: the dataset yields whole batches
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)     # Lightning calls this itself
        for batch in loader: ...            # CtrBatch / GenerativeBatch

**Sharding.** The job has `world_size × max(1, num_workers)` slots. Each epoch the shards are
ordered by a permutation seeded with `(seed, epoch)` and assigned to slots by
longest-processing-time (largest shard first, ties in permutation order, to the slot with the
fewest samples so far), so each slot's sample count is balanced and — since the assignment only
looks at shard sizes — the same in every epoch. Every shard belongs to exactly one slot, so in
one epoch every sample of the split is read exactly once across the job.

**Equal steps.** From the manifest's per-shard sample counts, slot (r, w) makes
`ceil(samples / batch_size)` real batches; rank r's count is the sum over its workers, and every
rank yields `max` of those counts (`len(dataset)`): short ranks are topped up with padding
batches (`CtrBatch.empty()`: no users, no targets, `weight = 0.0`), spread over their workers.
Padding contributes nothing to the loss (scale by `batch.weight`) but keeps DDP collectives in
step. A slot whose shards turn out shorter than the manifest says (corrupt shard) pads more; one
that holds more samples than the manifest says drops the excess (counted, warned, an error in
strict mode), so the batch count never changes at run time.

**Shuffling.** With `shuffle=True`: the seeded per-epoch shard order above plus a bounded
shuffle buffer of `shuffle_buffer` users per worker, seeded with `(seed, epoch, rank, worker)`.
The same seed, epoch, world size and worker count give the same batches.

**Bad data.** A shard that cannot be opened, is not a tar, is truncated or holds fewer samples
than the manifest says is reported with `warnings.warn` and counted (`stats["corrupt_shards"]`,
`stats["missing_samples"]`); samples read before the damage are kept. Tar members with absolute
paths, `..` components or of a non-regular type are skipped (`stats["unsafe_members"]`); samples
that fail to decode are skipped (`stats["bad_samples"]`). Members and samples reach this policy
through the reading stages' WebDataset `handler=` (`features.tar_reader`), which counts, warns
and returns True (skip, go on). With `strict=True` each of these raises `ShardError` naming the
shard. Counters are per process: `dataset.stats` accumulates what this process read; every
batch also carries the increments since the producing worker's previous batch in
`batch.loader_stats`, which the consumer sums (see `trainers.data`).
"""

from __future__ import annotations

import functools
import heapq
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import filters as wds_filters

from lifeseq.features.batch import CtrBatch, GenerativeBatch, collate_ctr, collate_generative
from lifeseq.features.schema import check_members, format_version_message
from lifeseq.features.tar_reader import (  # noqa: F401 (re-exported: part of this module's API)
    CORRUPT_ERRORS,
    MemberError,
    ShardError,
    iter_tar_samples,
    open_shard,
    unsafe_reason,
)
from lifeseq.features.windows import TrainingWindows, window_samples
from lifeseq.pipeline import storage
from lifeseq.pipeline.compat import infinite_constant_sampler
from lifeseq.pipeline.sample_codec import (
    SCHEMA_VERSION,
    SPLITS,
    VALUE_MEMBER,
    UserSample,
    decode_split,
)

VIEWS = ("ctr", "generative")
#: Counter names of `LifeseqDataset.stats`.
STAT_KEYS = (
    "shards",
    "samples",
    "targets",
    "batches",
    "padding_batches",
    "corrupt_shards",
    "missing_samples",
    "dropped_samples",
    "unsafe_members",
    "bad_members",
    "bad_samples",
)

Batch = CtrBatch | GenerativeBatch


@dataclass(frozen=True)
class ShardSpec:
    """One shard file.

    Attributes:
        url: local path or URL.
        samples: samples (users) it holds, from the manifest.
        bytes: file size from the manifest (0 when unknown).
    """

    url: str
    samples: int
    bytes: int = 0


# --- manifest and planning ----------------------------------------------------------------------


def shards_from_manifest(root: str, split: str, manifest: dict[str, Any]) -> list[ShardSpec]:
    """Shards of `split` listed in a manifest, as `root/shards/{name}` URLs.

    Raises:
        ValueError: unknown split or a malformed `splits.{split}.shards` entry, naming it.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    info = manifest.get("splits", {}).get(split)
    if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
        raise ValueError(f"manifest of {root}: splits.{split}.shards missing or not a list")
    specs = []
    for i, entry in enumerate(info["shards"]):
        name, samples = entry.get("name"), entry.get("samples")
        if not isinstance(name, str) or not isinstance(samples, int) or samples < 0:
            raise ValueError(
                f"manifest of {root}: splits.{split}.shards[{i}]: expected name (str) and "
                f"samples (int >= 0), got {entry!r}"
            )
        specs.append(ShardSpec(storage.join(root, "shards", name), samples, entry.get("bytes", 0)))
    return specs


@dataclass(frozen=True)
class EpochPlan:
    """Which shards each (rank, worker) reads in one epoch and how many batches it yields.

    Attributes:
        shards: [rank][worker] → shard indices in read order.
        samples: [rank][worker] → samples in those shards (manifest counts).
        batches: [rank][worker] → batches the worker yields, padding included.
        batches_per_rank: equal for every rank (the sum of a rank's `batches`).
    """

    shards: list[list[list[int]]]
    samples: list[list[int]]
    batches: list[list[int]]
    batches_per_rank: int


def plan_epoch(
    samples: Sequence[int],
    world_size: int,
    workers_per_rank: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
) -> EpochPlan:
    """Assign shards to (rank, worker) slots and fix every slot's batch count.

    Args:
        samples: samples per shard (manifest order).
        world_size: ranks.
        workers_per_rank: DataLoader workers per rank (1 for `num_workers=0`).
        batch_size: users per batch.
        seed: shuffle seed.
        epoch: epoch number.
        shuffle: permute the shard order with `(seed, epoch)`; else manifest order.

    Returns:
        The plan; slot loads and batch counts do not depend on `epoch` or `seed`.
    """
    n = len(samples)
    slots = world_size * workers_per_rank
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    # Slot s serves rank s % world_size: the first (largest) shards go to different ranks.
    heap = [(0, s) for s in range(slots)]
    owned: list[list[int]] = [[] for _ in range(slots)]
    for idx in sorted(range(n), key=lambda i: (-samples[i], position[i])):
        load, slot = heapq.heappop(heap)
        owned[slot].append(idx)
        heapq.heappush(heap, (load + samples[idx], slot))
    shards = [[[] for _ in range(workers_per_rank)] for _ in range(world_size)]
    counts = [[0] * workers_per_rank for _ in range(world_size)]
    for slot, ids in enumerate(owned):
        rank, worker = slot % world_size, slot // world_size
        shards[rank][worker] = sorted(ids, key=lambda i: position[i])
        counts[rank][worker] = sum(samples[i] for i in ids)
    real = [[math.ceil(c / batch_size) for c in row] for row in counts]
    per_rank = max((sum(row) for row in real), default=0)
    batches = []
    for row in real:
        quota = list(row)
        for _ in range(per_rank - sum(row)):  # pad the least busy worker first
            quota[min(range(workers_per_rank), key=lambda w: (quota[w], w))] += 1
        batches.append(quota)
    return EpochPlan(shards=shards, samples=counts, batches=batches, batches_per_rank=per_rank)


def batch_order(worker_batches: Sequence[int]) -> list[int]:
    """The worker of each batch in the order a `DataLoader` delivers one rank's batches.

    `DataLoader` (in order) takes batches from its workers round-robin and drops a worker from
    the rotation once it is exhausted; with `worker_batches[w]` batches from worker `w` the
    delivery order is round r = 0, 1, ...: every worker with more than r batches, by id.

    >>> batch_order([2, 3, 1])
    [0, 1, 2, 0, 1, 1]
    """
    rounds = max(worker_batches, default=0)
    return [w for r in range(rounds) for w, n in enumerate(worker_batches) if n > r]


# --- the dataset --------------------------------------------------------------------------------


def _shuffled(
    items: Iterator[UserSample], size: int, rng: np.random.Generator
) -> Iterator[UserSample]:
    """Bounded-buffer shuffle: hold `size` items, emit a random one per new item, then drain.

    Not `webdataset.filters.shuffle`: seeded, it would keep every property the loader needs
    (the same multiset of samples, so exactly-once and batch counts hold; a deterministic
    stream, which mid-epoch resume replays), but its algorithm and RNG (`random.Random`,
    swap-with-last `pick`) give a different order for the same seed, so every training run
    would change batch order against recorded runs (`tests/golden`) and a checkpoint written
    mid-epoch by this code would resume onto a different rest of its epoch.
    """
    buffer: list[UserSample] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class _UndecodableSample(ValueError):
    """A raw sample that `decode_split` rejects, as passed to the decode stage's handler."""

    def __init__(self, key: str, cause: Exception) -> None:
        super().__init__(f"sample {key!r}: {cause}")
        self.key, self.cause = key, cause


@dataclass
class _ShardTally:
    """What one shard gave: samples of the split yielded, samples that did not decode (whose
    split is unknown) — checked against the manifest's count at the end of the shard."""

    read: int = 0
    bad: int = 0


def _decode(raw: dict[str, Any], split: str) -> UserSample | None:
    """The decode stage's function: `decode_split`, its errors raised as `_UndecodableSample`.

    Our own decoder rather than WebDataset's `autodecode`: it converts only the history prefix
    the split's targets need and passes over users without targets in the split (None, which
    `webdataset.filters.map` drops), where `autodecode` would `np.load` every member whole.
    """
    try:
        return decode_split(raw, split)
    except (ValueError, KeyError) as exc:
        raise _UndecodableSample(raw.get("__key__", "?"), exc) from exc


def check_loader_args(
    prefix: str = "",
    *,
    view: str,
    num_workers: int,
    shuffle_buffer: int,
    seed: int,
    positive: dict[str, int | None],
) -> None:
    """Validate loader settings shared by `LifeseqDataset` and the data module.

    Args:
        prefix: prepended to the field names in messages (e.g. `data.` for the YAML section).
        view: one of `VIEWS`.
        num_workers: >= 0.
        shuffle_buffer: >= 0.
        seed: >= 0.
        positive: further fields that must be >= 1 when given (None: not set).

    Raises:
        ValueError: the first field out of range, named.
    """
    if view not in VIEWS:
        raise ValueError(f"{prefix}view: expected one of {VIEWS}, got {view!r}")
    for name, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{prefix}{name}: expected >= 1, got {value}")
    for name, value in (
        ("num_workers", num_workers),
        ("shuffle_buffer", shuffle_buffer),
        ("seed", seed),
    ):
        if value < 0:
            raise ValueError(f"{prefix}{name}: expected >= 0, got {value}")


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
    return rank, world_size


class LifeseqDataset(IterableDataset):
    """Batches of one split, for one rank, split over `num_workers` DataLoader workers.

    Args:
        shards: the split's shards with manifest sample counts.
        view: `ctr` (yields `CtrBatch`) or `generative` (yields `GenerativeBatch`).
        batch_size: users per batch.
        max_history: CTR history cap per user.
        max_len: generative sequence cap per user.
        shuffle: seeded per-epoch shard order and sample shuffle buffer (training); else
            manifest order (evaluation).
        shuffle_buffer: users held by each worker's shuffle buffer (<= 1: no buffer).
        seed: shuffle seed.
        strict: raise `ShardError` on damaged shards and bad members instead of skipping.
        rank: this process's rank (default: torch.distributed, else 0).
        world_size: ranks in the job (default: torch.distributed, else 1).
        num_workers: DataLoader workers per rank this dataset is planned for (0 = in-process).
        with_value: samples carry the optional `value` member (padding batches get it too).
        split: the split read from the shards: each user sample yields that split's targets
            and the history prefix they need; users without targets of it are passed over.
        train_windows: generative training over the whole history (`features.windows`): each
            sample becomes several rows of at most `max_len` events; None = one row, the most
            recent `max_len` events. Only where `split` is `train`.

    Raises:
        ValueError: an argument out of range, naming it.
    """

    def __init__(
        self,
        shards: Sequence[ShardSpec],
        *,
        view: str = "ctr",
        batch_size: int = 64,
        max_history: int = 1024,
        max_len: int = 200,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        strict: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        with_value: bool = False,
        split: str = "train",
        train_windows: TrainingWindows | None = None,
    ) -> None:
        super().__init__()
        check_loader_args(
            view=view,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            positive={"batch_size": batch_size, "max_history": max_history, "max_len": max_len},
        )
        self.shards = list(shards)
        self.view = view
        self.batch_size = batch_size
        self.max_history = max_history
        self.max_len = max_len
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.strict = strict
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.num_workers = num_workers
        self.with_value = with_value
        if train_windows is not None:
            if view != "generative":
                raise ValueError(
                    f"data.train_windows: whole-history windows are for data.view generative, "
                    f"got view {view!r}; remove train_windows"
                )
            train_windows.stride(max_len)  # context < max_len, else a ValueError naming it
        self.train_windows = train_windows
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.split = split
        self.epoch = 0
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._delta: Counter[str] = Counter()
        self._plan: tuple[int, EpochPlan] | None = None
        self._resume_epoch: int | None = None
        self._resume_skip: list[int] = []

    @classmethod
    def from_manifest(cls, root: str, split: str, **kwargs: Any) -> LifeseqDataset:
        """Dataset over the shards `root/manifest.json` lists for `split`.

        Args:
            root: pipeline output directory (local path or URI).
            split: `train`, `valid` or `test`.
            **kwargs: the constructor's keyword arguments (not `shards`, `with_value`, `split`).

        Raises:
            FileNotFoundError: no manifest.
            ValueError: a manifest of another shard format (saying to rebuild) or whose
                `members` differ from `pipeline.sample_codec`, naming the field.
        """
        source = storage.join(root, "manifest.json")
        manifest = storage.read_json(source)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(format_version_message(manifest.get("schema_version"), source))
        members = check_members(manifest.get("members"), source)
        return cls(
            shards_from_manifest(root, split, manifest),
            with_value=VALUE_MEMBER in members,
            split=split,
            **kwargs,
        )

    # -- planning --

    @property
    def workers_per_rank(self) -> int:
        """Slots per rank: `max(1, num_workers)`."""
        return max(1, self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that seeds shard order and shuffle buffers."""
        self.epoch = int(epoch)

    def plan(self) -> EpochPlan:
        """The current epoch's shard assignment and batch counts (cached per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            plan = plan_epoch(
                [s.samples for s in self.shards],
                self.world_size,
                self.workers_per_rank,
                self.batch_size,
                self.seed,
                self.epoch,
                self.shuffle,
            )
            self._plan = (self.epoch, plan)
        return self._plan[1]

    def __len__(self) -> int:
        """Batches this rank yields per epoch (equal on every rank)."""
        return self.plan().batches_per_rank

    # -- iteration --

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.workers_per_rank:
            raise ValueError(
                f"LifeseqDataset was planned for num_workers={self.num_workers} but runs in "
                f"{workers} DataLoader worker(s); pass the DataLoader's num_workers to the "
                "dataset, or samples would be read more than once or not at all"
            )
        return self.iter_worker(worker)

    def iter_worker(self, worker: int) -> Iterator[Batch]:
        """Batches of DataLoader worker `worker` of this rank (what `__iter__` runs in a worker;
        tests call it directly to simulate ranks × workers in one process).

        Raises:
            ValueError: `worker` out of range.
            ShardError: (strict) a damaged shard or bad member, naming the shard.
        """
        if not 0 <= worker < self.workers_per_rank:
            raise ValueError(
                f"worker: expected 0 <= worker < {self.workers_per_rank}, got {worker}"
            )
        plan = self.plan()
        skip = self._resume_skip[worker] if self._resume_epoch == self.epoch else 0
        for index, group in enumerate(self._worker_groups(plan, worker)):
            if index < skip:
                continue  # consumed before the checkpoint this run resumed from
            batch = self._padding() if group is None else self._collate(group)
            if group is None:
                self._count("padding_batches")
            yield self._emit(batch, worker)

    def _worker_groups(self, plan: EpochPlan, worker: int) -> Iterator[list[UserSample] | None]:
        """The samples of each of the worker's batches in order (None: a padding batch);
        exactly `plan.batches[rank][worker]` of them."""
        shard_ids = plan.shards[self.rank][worker]
        quota = plan.batches[self.rank][worker]
        stream: Iterator[UserSample] = self._iter_samples(shard_ids)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
            stream = _shuffled(stream, self.shuffle_buffer, rng)
        produced = 0
        pending: list[UserSample] = []
        for sample in stream:
            if produced >= quota:
                self._overflow(shard_ids)
                continue
            pending.append(sample)
            if len(pending) == self.batch_size:
                yield pending
                produced += 1
                pending = []
        if pending:
            if produced < quota:
                yield pending
                produced += 1
            else:
                for _ in pending:
                    self._overflow(shard_ids)
        while produced < quota:
            yield None
            produced += 1

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make this rank's iteration of `epoch` start after its first `batches` batches (in
        the order `LifeseqDataLoader` yields them); other epochs are not affected.

        Each worker skips its share of those batches: it still reads (and shuffles) their
        samples, which fixes the shuffle state, but does not collate them.

        Raises:
            ValueError: `batches` outside [0, len(self)] for that epoch.
        """
        self.set_epoch(epoch)
        order = batch_order(self.plan().batches[self.rank])
        if not 0 <= batches <= len(order):
            raise ValueError(f"resume_at: batches {batches} outside [0, {len(order)}]")
        skip = [0] * self.workers_per_rank
        for worker in order[:batches]:
            skip[worker] += 1
        self._resume_epoch, self._resume_skip = epoch, skip

    def _collate(self, samples: list[UserSample]) -> Batch:
        self._count("samples", len(samples))
        self._count("targets", sum(s.num_targets for s in samples))
        if self.view == "ctr":
            return collate_ctr(samples, self.max_history)
        # Only evaluation excludes dropped history items; training skips collecting them.
        if self.train_windows is not None and self.split == "train":
            rows, context = window_samples(samples, self.max_len, self.train_windows)
            return collate_generative(rows, self.max_len, dropped_items=False, row_context=context)
        return collate_generative(samples, self.max_len, dropped_items=self.split != "train")

    def _padding(self) -> Batch:
        if self.view == "ctr":
            return CtrBatch.empty(self.with_value)
        return GenerativeBatch.empty(self.with_value)

    def _emit(self, batch: Batch, worker: int) -> Batch:
        self._count("batches")
        batch.loader_worker = worker
        batch.loader_stats = {k: v for k, v in self._delta.items() if v}
        self._delta = Counter()
        return batch

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n
        self._delta[key] += n

    def _problem(self, key: str, message: str) -> None:
        self._count(key)
        if self.strict:
            raise ShardError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _overflow(self, shard_ids: list[int]) -> None:
        urls = [self.shards[i].url for i in shard_ids]
        self._count("dropped_samples")
        message = (
            f"shards {urls} hold more samples than the manifest lists; extra samples are dropped "
            "to keep every rank's batch count equal"
        )
        if self.strict:
            raise ShardError(message)
        if self.stats["dropped_samples"] == 1:
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _iter_samples(self, shard_ids: list[int]) -> Iterator[UserSample]:
        """This split's samples of the worker's shards, in order.

        Each shard runs through the stages `open_shard` → `iter_tar_samples` (WebDataset's
        `group_by_keys`) → `webdataset.filters.map(decode_split)`, all with `_handle` as their
        `handler=`; a shard that cannot be opened, breaks off, or whose count differs from the
        manifest goes to `_corrupt`.
        """
        for idx in shard_ids:
            spec = self.shards[idx]
            self._count("shards")
            tally = _ShardTally()
            handler = functools.partial(self._handle, spec, tally)
            decode = wds_filters.map(functools.partial(_decode, split=self.split), handler=handler)
            try:
                handle = open_shard(spec.url)
            except OSError as exc:
                self._corrupt(spec, f"cannot be opened ({exc})", 0)
                continue
            try:
                with handle:
                    for sample in decode(iter_tar_samples(handle, spec.url, handler)):
                        tally.read += 1
                        yield sample
            except CORRUPT_ERRORS as exc:
                self._corrupt(
                    spec, f"is damaged ({type(exc).__name__}: {exc})", tally.read + tally.bad
                )
                continue
            # A sample that does not decode may or may not be of this split.
            if tally.read > spec.samples or tally.read + tally.bad < spec.samples:
                self._corrupt(
                    spec, "is truncated or differs from the manifest", tally.read + tally.bad
                )

    def _handle(self, spec: ShardSpec, tally: _ShardTally, exn: Exception) -> bool:
        """The reading stages' `handler=` for shard `spec`: count and warn a member that is not
        read or a sample that does not decode and return True (skip it, go on); in strict mode
        raise `ShardError` naming the shard. Any other exception is re-raised."""
        if isinstance(exn, MemberError):
            verb = "rejected" if exn.stat == "unsafe_members" else "skipped"
            message = f"shard {spec.url}: {verb} tar member {exn.name!r}: {exn.reason}"
            self._problem(exn.stat, message)
        elif isinstance(exn, _UndecodableSample):
            tally.bad += 1
            self._problem(
                "bad_samples", f"shard {spec.url}: skipped sample {exn.key!r}: {exn.cause}"
            )
        else:
            raise exn
        return True

    def _corrupt(self, spec: ShardSpec, what: str, read: int) -> None:
        missing = max(spec.samples - read, 0)
        self._count("missing_samples", missing)
        self._problem(
            "corrupt_shards",
            f"shard {spec.url} {what}: read {read} of {spec.samples} samples listed in the "
            f"manifest; {missing} skipped",
        )


class _EpochSampler(infinite_constant_sampler()):  # type: ignore[misc]
    """The DataLoader's (infinite, constant) sampler for an iterable dataset, with `set_epoch`
    forwarded to the dataset — Lightning calls `dataloader.sampler.set_epoch(epoch)` each epoch."""

    def __init__(self, dataset: LifeseqDataset) -> None:
        super().__init__()
        self._dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self._dataset.set_epoch(epoch)


class LifeseqDataLoader(DataLoader):
    """A DataLoader for `LifeseqDataset`: `batch_size=None` (the dataset batches), the
    dataset's `num_workers`, `sampler.set_epoch` reaching the dataset, and a resumable position.

    Workers are not persistent, so each epoch's workers start from the epoch set before
    `iter()`.

    **Resuming mid-epoch.** `state_dict()` records the epoch and how many batches of it this
    loader has yielded; Lightning stores it in every checkpoint (stateful-dataloader support of
    its fit loop; nothing is pre-fetched because the loader has a length) and calls
    `load_state_dict()` before iterating again after `fit(ckpt_path=...)`. The next iteration of
    that epoch then yields exactly the batches an uninterrupted run would have yielded after
    that point, in the same order: workers skip their share without collating
    (`LifeseqDataset.resume_at`), and this loader re-establishes the round-robin delivery order
    (`batch_order`) from each batch's `loader_worker`, holding at most `num_workers - 1`
    batches. The position is exact when world size, `num_workers`, `batch_size`, `seed` and the
    shards are those of the checkpoint; otherwise the same number of batches is skipped in the
    new layout (the epoch keeps the length the restored loop expects) with a warning that some
    samples of this epoch may be seen twice or not at all.

    Args:
        dataset: the dataset.
        pin_memory: pin batches (they implement `pin_memory()`).
        **kwargs: other DataLoader arguments (`prefetch_factor`, `timeout`,
            `multiprocessing_context`, ...).

    Raises:
        ValueError: `batch_size`, `num_workers`, `sampler` or `persistent_workers` given.
    """

    def __init__(self, dataset: LifeseqDataset, pin_memory: bool = False, **kwargs: Any) -> None:
        fixed = sorted({"batch_size", "num_workers", "sampler", "persistent_workers"} & set(kwargs))
        if fixed:
            raise ValueError(f"LifeseqDataLoader: {fixed} are fixed by the dataset")
        # A private generator: creating an iterator draws worker base seeds from it, not from
        # the global RNG, whose stream (dropout, ...) must not depend on when epochs start.
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.seed))
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=dataset.num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            **kwargs,
        )
        object.__setattr__(self, "sampler", _EpochSampler(dataset))
        object.__setattr__(self, "_position", (dataset.epoch, 0))
        object.__setattr__(self, "_resume", None)

    def _layout(self) -> dict[str, Any]:
        ds: LifeseqDataset = self.dataset  # type: ignore[assignment]
        return {
            "world_size": ds.world_size,
            "num_workers": ds.num_workers,
            "batch_size": ds.batch_size,
            "seed": ds.seed,
            "shuffle": ds.shuffle,
            "shard_samples": [s.samples for s in ds.shards],
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready position: `{"epoch", "batches"}` (batches of that epoch yielded so far)
        plus the layout (world size, workers, batch size, seed, shard sizes) they refer to."""
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`'s position at the next iteration of its epoch.

        Raises:
            ValueError: `state` lacks `epoch` or `batches`.
        """
        if not isinstance(state.get("epoch"), int) or not isinstance(state.get("batches"), int):
            raise ValueError(
                f"LifeseqDataLoader.load_state_dict: expected integer 'epoch' and 'batches', "
                f"got {state!r}"
            )
        changed = sorted(k for k, v in self._layout().items() if k in state and state[k] != v)
        if changed:
            warnings.warn(
                f"resuming the data position of epoch {state['epoch']} (batch {state['batches']}) "
                f"with a different {', '.join(changed)} than the checkpoint: the same number of "
                "batches is skipped in the new layout, so some samples of this epoch may be "
                "seen twice or not at all",
                RuntimeWarning,
                stacklevel=2,
            )
        object.__setattr__(self, "_resume", (state["epoch"], state["batches"]))

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        """Batches of the dataset's current epoch.

        Lazy: nothing (workers included) starts until the first `next()`, so the epoch that
        `sampler.set_epoch` sets after `iter()` still applies — Lightning creates the training
        iterator before it sets the epoch when it resumes from a checkpoint.
        """
        ds: LifeseqDataset = self.dataset  # type: ignore[assignment]
        epoch, start = ds.epoch, 0
        order = batch_order(ds.plan().batches[ds.rank])
        if self._resume is not None and self._resume[0] == epoch:
            start = min(self._resume[1], len(order))
        object.__setattr__(self, "_resume", None)
        ds.resume_at(epoch, start)
        object.__setattr__(self, "_position", (epoch, start))
        yield from self._ordered(super().__iter__(), order, start)

    def _ordered(self, source: Iterator[Batch], order: list[int], start: int) -> Iterator[Batch]:
        held: dict[int, list[Batch]] = {}
        epoch = self._position[0]
        for position, worker in enumerate(order[start:], start=start + 1):
            while not held.get(worker):
                batch = next(source)
                held.setdefault(batch.loader_worker, []).append(batch)
            object.__setattr__(self, "_position", (epoch, position))
            yield held[worker].pop(0)
        for extra in source:
            raise RuntimeError(
                f"LifeseqDataLoader: worker {extra.loader_worker} yielded more batches than "
                "planned (a bug: please report it)"
            )
