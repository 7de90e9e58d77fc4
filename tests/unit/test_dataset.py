"""Tests of the shard dataset (`features.dataset`): exactly-once sharding over ranks × workers,
equal batch counts, seeded epoch-aware shuffling, damaged shards and unsafe tar members.

Shards are written with the pipeline's own `ShardWriter` and listed in a hand-written
`manifest.json` shaped like the real one; `write_out_dir` is reused by `test_datamodule.py`.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, GenerativeBatch
from lifeseq.features.dataset import (
    LifeseqDataLoader,
    LifeseqDataset,
    ShardError,
    ShardSpec,
    batch_order,
    plan_epoch,
)
from lifeseq.features.windows import TrainingWindows, window_ends
from lifeseq.pipeline.sample_codec import (
    SCHEMA_VERSION,
    SPLITS,
    RecordLayout,
    UserRecord,
    UserSample,
    encode_record,
)
from lifeseq.pipeline.shard_writer import ShardWriter

pytestmark = pytest.mark.unit

#: Uneven shard sizes (users per shard) of the default train split.
UNEVEN = [9, 2, 5, 1, 7, 3, 4, 8, 6]


def make_sample(user: int, split: str = "train", history_len: int | None = None) -> UserSample:
    """User `user` with `history_len` events (default 3 + user % 11) and two targets (a positive
    after the whole history and a negative after half of it)."""
    n = 3 + user % 11 if history_len is None else history_len
    history = {
        "item": np.arange(n, dtype=np.int64) + 2,
        "category": np.full(n, 2 + user % 3, dtype=np.int64),
        "behavior": np.full(n, 2, dtype=np.int64),
        "ts": np.arange(n, dtype=np.int64) * 60 + 1_700_000_000,
    }
    end = 1_700_000_000 + n * 60
    targets = {
        "target_item": np.array([1000 + user, 2000 + user], dtype=np.int64),
        "target_category": np.array([2, 3], dtype=np.int64),
        "target_ts": np.array([end, end], dtype=np.int64),
        "target_label": np.array([1.0, 0.0], dtype=np.float32),
        "target_hist_len": np.array([n, n // 2], dtype=np.int64),
    }
    return UserSample(user=f"user{user:04d}", split=split, history=history, targets=targets)


def layout_of(sample: UserSample) -> RecordLayout:
    """The int64 layout (holds any test values), with `value` when the sample has it."""
    return RecordLayout.widest(with_value="value" in sample.history)


def encode_sample(sample: UserSample) -> list[tuple[str, bytes]]:
    """The shard members of a user holding only `sample`'s split."""
    return encode_record(UserRecord.from_samples([sample]), layout_of(sample))


#: Manifest vocab sizes `write_out_dir` writes by default.
VOCAB = {"item": 3000, "category": 6, "behavior": 5}


def write_out_dir(
    root: Path,
    sizes: dict[str, list[int]] | None = None,
    history_len: int | None = None,
    *,
    sample_fn: Callable[[int, str], UserSample] | None = None,
    vocab: dict[str, int] | None = None,
) -> dict:
    """Write `root/shards/{split}/{split}-NNNNNN.tar` (one shard per entry of `sizes[split]`,
    that many users each, each user's record holding targets of that split only) and
    `root/manifest.json`; return the manifest.

    Users are numbered consecutively over the splits; `sample_fn(user, split)` makes each
    sample (default `make_sample(user, split, history_len)`), and `vocab` is the manifest's
    table sizes (default `VOCAB`).
    """
    sizes = sizes if sizes is not None else {"train": UNEVEN, "valid": [3, 2], "test": [4]}
    sample_fn = sample_fn or functools.partial(make_sample, history_len=history_len)
    user = 0
    splits = {}
    layout = None
    for split in SPLITS:
        shards = []
        directory = root / "shards" / split
        directory.mkdir(parents=True, exist_ok=True)
        for number, count in enumerate(sizes.get(split, [])):
            first = user
            samples = [sample_fn(first + i, split) for i in range(count)]
            user += count
            layout = layout or (layout_of(samples[0]) if samples else None)
            writer = ShardWriter(
                str(directory),
                f"tmp-{number:06d}",
                10_000,
                1 << 40,
                layout or RecordLayout.widest(),
            )
            for i, sample in enumerate(samples):
                writer.write(f"s{first + i:06d}", UserRecord.from_samples([sample]))
            (info,) = writer.close()
            name = f"{split}-{number:06d}.tar"
            Path(info.path).rename(directory / name)
            shards.append(
                {
                    "name": f"{split}/{name}",
                    "samples": count,
                    "bytes": info.bytes,
                    "sha256": info.sha256,
                }
            )
        splits[split] = {"samples": sum(sizes.get(split, [])), "shards": shards}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "vocab": dict(vocab if vocab is not None else VOCAB),
        "members": (layout or RecordLayout.widest()).members(),
        "splits": splits,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def users_of(manifest: dict, split: str = "train") -> list[str]:
    """User ids the manifest's split holds (write_out_dir numbers users consecutively)."""
    first = sum(manifest["splits"][s]["samples"] for s in SPLITS[: SPLITS.index(split)])
    return [f"user{u:04d}" for u in range(first, first + manifest["splits"][split]["samples"])]


def run_job(
    root: Path, world_size: int = 2, workers: int = 3, epoch: int = 0, **kwargs: object
) -> dict[tuple[int, int], list]:
    """All batches of every (rank, worker) of a simulated job, in each worker's order."""
    out = {}
    for rank in range(world_size):
        ds = LifeseqDataset.from_manifest(
            str(root), "train", rank=rank, world_size=world_size, num_workers=workers, **kwargs
        )
        ds.set_epoch(epoch)
        for worker in range(max(1, workers)):
            out[(rank, worker)] = list(ds.iter_worker(worker))
    return out


@pytest.fixture()
def out_dir(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "out"
    return root, write_out_dir(root)


# --- exactly once, equal batch counts ------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_every_sample_once_over_2_ranks_x_3_workers(out_dir, batch_size: int) -> None:
    root, manifest = out_dir

    batches = run_job(root, batch_size=batch_size, shuffle_buffer=4, seed=3)

    seen = [u for bs in batches.values() for b in bs for u in b.users]
    assert len(seen) == sum(UNEVEN) == 45
    assert sorted(seen) == users_of(manifest)
    per_rank = Counter()
    for (rank, _), bs in batches.items():
        per_rank[rank] += len(bs)
    expected_len = len(
        LifeseqDataset.from_manifest(
            str(root), "train", rank=0, world_size=2, num_workers=3, batch_size=batch_size
        )
    )
    assert per_rank[0] == per_rank[1] == expected_len


def test_batch_counts_from_manifest_and_padding_is_empty_with_weight_0(out_dir) -> None:
    root, _ = out_dir

    batches = run_job(root, batch_size=4)

    plan = LifeseqDataset.from_manifest(
        str(root), "train", rank=0, world_size=2, num_workers=3, batch_size=4
    ).plan()
    # Balanced: 45 samples over 6 slots; every shard in exactly one slot.
    owned = sorted(i for rank in plan.shards for worker in rank for i in worker)
    assert owned == list(range(len(UNEVEN)))
    assert sum(map(sum, plan.samples)) == 45
    assert max(map(max, plan.samples)) - min(map(min, plan.samples)) <= max(UNEVEN)
    padding = [b for bs in batches.values() for b in bs if b.weight == 0.0]
    real = [b for bs in batches.values() for b in bs if b.weight == 1.0]
    assert len(padding) + len(real) == 2 * plan.batches_per_rank
    assert len(real) == sum(-(-n // 4) for row in plan.samples for n in row)
    for b in padding:
        assert isinstance(b, CtrBatch) and b.is_padding
        assert b.num_users == 0 and b.num_targets == 0 and b.users == []
        assert b.history["item"].values.numel() == 0
    for (rank, worker), bs in batches.items():
        assert len(bs) == plan.batches[rank][worker]
    assert all(b.num_users >= 1 and not b.is_padding for b in real)


def test_padding_batches_contribute_nothing_to_the_loss(out_dir) -> None:
    root, _ = out_dir
    batches = [b for bs in run_job(root, batch_size=4).values() for b in bs]
    pad = next(b for b in batches if b.is_padding)
    real = next(b for b in batches if not b.is_padding)
    weight = torch.zeros(1, requires_grad=True)

    def loss_of(batch: CtrBatch) -> torch.Tensor:
        logits = weight * batch.target_item.float()
        per_target = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, batch.label, reduction="none"
        )
        return batch.weight * per_target.sum() / max(batch.num_targets, 1)

    pad_loss = loss_of(pad)
    pad_loss.backward()
    assert pad_loss.item() == 0.0 and weight.grad is not None and weight.grad.item() == 0.0
    assert torch.isfinite(loss_of(real)) and loss_of(real).item() > 0


def test_more_ranks_than_shards_pads_idle_ranks(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [5]})

    batches = run_job(tmp_path, world_size=3, workers=2, batch_size=2)

    per_rank = Counter(rank for (rank, _), bs in batches.items() for _ in bs)
    assert per_rank == {0: 3, 1: 3, 2: 3}
    assert sum(b.num_users for bs in batches.values() for b in bs) == 5


def test_plan_loads_do_not_depend_on_epoch_or_seed() -> None:
    sizes = [7, 7, 3, 3, 3, 9, 1, 1, 5]
    plans = [plan_epoch(sizes, 2, 3, 2, seed, epoch, True) for seed in (0, 1) for epoch in range(4)]

    assert all(p.samples == plans[0].samples for p in plans)
    assert all(p.batches == plans[0].batches for p in plans)
    assert len({str(p.shards) for p in plans}) > 1  # which equal-size shard goes where varies


def test_dataloader_with_real_worker_processes_reads_rank_share_once(out_dir) -> None:
    root, manifest = out_dir
    seen: list[str] = []
    lengths = []
    for rank in range(2):
        ds = LifeseqDataset.from_manifest(
            str(root), "train", rank=rank, world_size=2, num_workers=2, batch_size=3
        )
        batches = list(LifeseqDataLoader(ds))
        lengths.append(len(batches))
        assert len(batches) == len(ds)
        seen += [u for b in batches for u in b.users]

    assert lengths[0] == lengths[1]
    assert sorted(seen) == users_of(manifest)


def test_worker_count_mismatch_fails_loudly(out_dir) -> None:
    root, _ = out_dir
    ds = LifeseqDataset.from_manifest(str(root), "train", num_workers=3, batch_size=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)

    with pytest.raises(ValueError, match="planned for num_workers=3"):
        next(iter(loader))


# --- shuffling -----------------------------------------------------------------------------------


def order(root: Path, epoch: int, seed: int = 0, shuffle: bool = True) -> list[str]:
    batches = run_job(root, epoch=epoch, seed=seed, shuffle=shuffle, batch_size=2, shuffle_buffer=8)
    return [u for key in sorted(batches) for b in batches[key] for u in b.users]


def test_same_seed_and_epoch_give_the_same_order(out_dir) -> None:
    root, manifest = out_dir

    first, again = order(root, epoch=1), order(root, epoch=1)

    assert first == again
    assert sorted(first) == users_of(manifest)


def test_order_changes_across_epochs_and_seeds(out_dir) -> None:
    root, manifest = out_dir

    epoch0, epoch1, other_seed = order(root, 0), order(root, 1), order(root, 0, seed=99)

    assert epoch0 != epoch1 and epoch0 != other_seed
    assert sorted(epoch0) == sorted(epoch1) == users_of(manifest)


def test_no_shuffle_reads_in_manifest_order(tmp_path: Path) -> None:
    manifest = write_out_dir(tmp_path, {"train": [3, 4, 2]})
    ds = LifeseqDataset.from_manifest(str(tmp_path), "train", shuffle=False, batch_size=2)

    users = [u for b in ds.iter_worker(0) for u in b.users]

    assert users == users_of(manifest)  # one slot: the shards in manifest order


def test_set_epoch_through_the_loader_sampler(out_dir) -> None:
    root, _ = out_dir
    ds = LifeseqDataset.from_manifest(str(root), "train", batch_size=2)
    loader = LifeseqDataLoader(ds)

    loader.sampler.set_epoch(5)
    users = [u for b in loader for u in b.users]

    assert ds.epoch == 5
    ds2 = LifeseqDataset.from_manifest(str(root), "train", batch_size=2)
    ds2.set_epoch(5)
    assert users == [u for b in ds2.iter_worker(0) for u in b.users]


def test_generative_view_yields_generative_batches(out_dir) -> None:
    root, manifest = out_dir

    batches = run_job(root, view="generative", max_len=4, batch_size=3)

    real = [b for bs in batches.values() for b in bs if not b.is_padding]
    assert all(isinstance(b, GenerativeBatch) for bs in batches.values() for b in bs)
    assert sorted(u for b in real for u in b.users) == users_of(manifest)
    assert max(int(b.sequence["item"].lengths.max()) for b in real) == 4
    # training batches skip the dropped-history items; evaluation batches carry them
    assert all(int(b.dropped_items.lengths.sum()) == 0 for b in real)
    valid = LifeseqDataset.from_manifest(str(root), "valid", view="generative", max_len=4)
    dropped = [int(b.dropped_items.lengths.sum()) for b in valid.iter_worker(0)]
    assert sum(dropped) > 0


def test_generative_training_windows_cover_every_event_once_and_only_in_training(out_dir) -> None:
    root, manifest = out_dir
    windows = TrainingWindows(context=2)
    batches = run_job(root, view="generative", max_len=4, batch_size=3, train_windows=windows)
    real = [b for bs in batches.values() for b in bs if not b.is_padding]
    stored = {u: 3 + int(u[4:]) % 11 for u in users_of(manifest)}  # make_sample's lengths
    rows_per_user: dict[str, int] = {}
    supervised_per_user: dict[str, int] = {}
    for batch in real:
        labels = batch.next_item().values.masked_fill(batch.context_positions(), 0)
        lengths = batch.sequence["item"].lengths.tolist()
        for user, row in zip(batch.users, torch.split(labels, lengths), strict=True):
            rows_per_user[user] = rows_per_user.get(user, 0) + 1
            supervised_per_user[user] = supervised_per_user.get(user, 0) + int((row > 0).sum())
    assert sorted(rows_per_user) == users_of(manifest)  # each user's windows, exactly once
    assert rows_per_user == {u: len(window_ends(n, 2)) for u, n in stored.items()}
    # every stored event is labelled once (the newest by the positive target after it)
    assert supervised_per_user == stored
    valid = LifeseqDataset.from_manifest(
        str(root), "valid", view="generative", max_len=4, train_windows=windows
    )
    assert all(int(b.row_context.sum()) == 0 and b.num_users == len(b.users)
               for b in valid.iter_worker(0))  # fmt: skip
    with pytest.raises(ValueError, match="train_windows: whole-history windows are for"):
        LifeseqDataset.from_manifest(str(root), "train", view="ctr", train_windows=windows)


# --- resuming mid-epoch ---------------------------------------------------------------------------


def test_batch_order_is_round_robin_over_workers_with_batches_left() -> None:
    assert batch_order([2, 3, 1]) == [0, 1, 2, 0, 1, 1]
    assert batch_order([0, 2]) == [1, 1]
    assert batch_order([]) == []


def _loader(root: Path, num_workers: int, rank: int = 0) -> LifeseqDataLoader:
    ds = LifeseqDataset.from_manifest(
        str(root), "train", rank=rank, world_size=2, num_workers=num_workers, batch_size=2,
        shuffle_buffer=4, seed=3,
    )  # fmt: skip
    return LifeseqDataLoader(ds)


def _fingerprint(batch: CtrBatch) -> tuple:
    return (tuple(batch.users), batch.weight, tuple(batch.target_item.tolist()))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_resumed_loader_yields_exactly_the_rest_of_the_epoch(out_dir, num_workers: int) -> None:
    root, _ = out_dir
    for rank in range(2):
        reference = _loader(root, num_workers, rank)
        reference.sampler.set_epoch(2)
        full = [_fingerprint(b) for b in reference]
        assert len(full) == len(reference.dataset)
        for consumed in (1, len(full) // 2, len(full) - 1, len(full)):
            interrupted = _loader(root, num_workers, rank)
            interrupted.sampler.set_epoch(2)
            iterator = iter(interrupted)
            head = [_fingerprint(next(iterator)) for _ in range(consumed)]
            state = json.loads(json.dumps(interrupted.state_dict()))  # as stored in checkpoints
            assert head == full[:consumed]
            assert (state["epoch"], state["batches"]) == (2, consumed)

            resumed = _loader(root, num_workers, rank)
            resumed.load_state_dict(state)
            resumed.sampler.set_epoch(2)
            assert [_fingerprint(b) for b in resumed] == full[consumed:]
            resumed.sampler.set_epoch(3)  # the next epoch starts from its beginning
            assert len(list(resumed)) == len(full)


def test_epoch_set_after_iter_still_applies(out_dir) -> None:
    """Lightning creates the training iterator before it sets the epoch on resume."""
    root, _ = out_dir
    reference = _loader(root, 2)
    reference.sampler.set_epoch(4)
    expected = [_fingerprint(b) for b in reference]
    loader = _loader(root, 2)

    iterator = iter(loader)
    loader.sampler.set_epoch(4)

    assert [_fingerprint(b) for b in iterator] == expected


def test_resume_position_applies_only_to_its_epoch(out_dir) -> None:
    root, _ = out_dir
    loader = _loader(root, 0)
    loader.load_state_dict({"epoch": 1, "batches": 3})
    loader.sampler.set_epoch(2)

    assert len(list(loader)) == len(loader.dataset)


def test_resume_in_another_layout_warns_and_keeps_the_epoch_length(out_dir) -> None:
    root, _ = out_dir
    state = {**_loader(root, 2).state_dict(), "batches": 2}
    loader = _loader(root, 0)

    with pytest.warns(RuntimeWarning, match="different num_workers"):
        loader.load_state_dict(state)
    assert len(list(loader)) == len(loader.dataset) - 2


def test_load_state_dict_rejects_a_malformed_state(out_dir) -> None:
    root, _ = out_dir
    with pytest.raises(ValueError, match="'epoch' and 'batches'"):
        _loader(root, 0).load_state_dict({"epoch": "0"})


# --- bad data ------------------------------------------------------------------------------------


def read_all(root: Path, strict: bool = False, **kwargs: object) -> tuple[LifeseqDataset, list]:
    ds = LifeseqDataset.from_manifest(
        str(root), "train", batch_size=2, strict=strict, shuffle=False, **kwargs
    )
    return ds, list(ds.iter_worker(0))


def test_corrupted_shard_is_skipped_warned_and_counted(out_dir) -> None:
    root, manifest = out_dir
    bad = root / "shards" / "train" / "train-000002.tar"  # 5 users
    bad.write_bytes(b"this is not a tar file" * 100)
    expected_len = len(LifeseqDataset.from_manifest(str(root), "train", batch_size=2))

    with pytest.warns(RuntimeWarning, match="train-000002.tar"):
        ds, batches = read_all(root)

    users = [u for b in batches for u in b.users]
    lost = set(users_of(manifest)[11:16])  # users of shard 2: after 9 + 2
    assert sorted(users) == sorted(set(users_of(manifest)) - lost)
    assert ds.stats["corrupt_shards"] == 1 and ds.stats["missing_samples"] == 5
    assert len(batches) == expected_len  # topped up with padding, no rank hangs
    summed = Counter()
    for b in batches:
        summed.update(b.loader_stats)
    assert summed["corrupt_shards"] == 1 and summed["samples"] == 40


def test_truncated_shard_keeps_samples_before_the_damage(out_dir) -> None:
    root, manifest = out_dir
    path = root / "shards" / "train" / "train-000000.tar"  # 9 users
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 700])  # cut inside a member

    with pytest.warns(RuntimeWarning, match="train-000000.tar.*read [0-9] of 9"):
        ds, batches = read_all(root)

    users = [u for b in batches for u in b.users]
    assert len(users) == len(set(users))
    kept = [u for u in users if u in users_of(manifest)[:9]]
    assert 0 < len(kept) < 9 and kept == users_of(manifest)[: len(kept)]
    assert ds.stats["corrupt_shards"] == 1
    assert ds.stats["missing_samples"] == 9 - len(kept)


def test_shard_cut_at_a_member_boundary_is_detected_by_count(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [3]})
    path = tmp_path / "shards" / "train" / "train-000000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    last_sample_start = next(m for m in members if m.name.startswith("s000002.")).offset
    path.write_bytes(path.read_bytes()[:last_sample_start])  # no end-of-archive blocks

    with pytest.warns(RuntimeWarning, match="read 2 of 3"):
        ds, batches = read_all(tmp_path)

    assert [u for b in batches for u in b.users] == ["user0000", "user0001"]
    assert ds.stats["corrupt_shards"] == 1 and ds.stats["missing_samples"] == 1


def test_missing_shard_file_is_counted(out_dir) -> None:
    root, _ = out_dir
    (root / "shards" / "train" / "train-000001.tar").unlink()

    with pytest.warns(RuntimeWarning, match="cannot be opened"):
        ds, _ = read_all(root)

    assert ds.stats["corrupt_shards"] == 1 and ds.stats["missing_samples"] == 2


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_strict_mode_raises_naming_the_shard(out_dir, damage: str) -> None:
    root, _ = out_dir
    path = root / "shards" / "train" / "train-000003.tar"
    data = path.read_bytes()
    path.write_bytes(b"x" * 1000 if damage == "garbage" else data[:1500])

    with pytest.raises(ShardError, match="train-000003.tar"):
        read_all(root, strict=True)


def test_more_samples_than_the_manifest_lists_are_dropped_not_extra_batches(tmp_path) -> None:
    manifest = write_out_dir(tmp_path, {"train": [4]})
    manifest["splits"]["train"]["shards"][0]["samples"] = 2  # the manifest undercounts
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.warns(RuntimeWarning) as record:
        ds, batches = read_all(tmp_path)

    messages = " | ".join(str(w.message) for w in record)
    assert "more samples than the manifest" in messages and "read 4 of 2" in messages

    assert len(batches) == 1 and batches[0].users == ["user0000", "user0001"]
    assert ds.stats["dropped_samples"] == 2
    assert ds.stats["corrupt_shards"] == 1  # the count differs from the manifest's


def tar_bytes(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A USTAR tar of `(name, data)` regular files and raw `TarInfo` headers, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def malicious_shard(path: Path) -> None:
    """A shard with one good sample and members that try to escape: `..`, absolute, symlink."""
    good = [(f"good.{suffix}", data) for suffix, data in encode_sample(make_sample(7))]
    evil = [(f"../../etc/evil.{suffix}", data) for suffix, data in encode_sample(make_sample(8))]
    absolute = [(f"/tmp/abs.{s}", data) for s, data in encode_sample(make_sample(9))[:2]]
    link = tarfile.TarInfo("link.history.npy")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    path.write_bytes(tar_bytes([*evil[:3], *good, *absolute, link]))


def test_path_traversal_members_are_rejected_and_counted(tmp_path: Path) -> None:
    manifest = write_out_dir(tmp_path, {"train": [1]})
    malicious_shard(tmp_path / "shards" / "train" / "train-000000.tar")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, batches = read_all(tmp_path)

    messages = [str(w.message) for w in caught]
    assert [u for b in batches for u in b.users] == ["user0007"]
    assert ds.stats["unsafe_members"] == 3 + 2 + 1
    assert any("'..' path component" in m and "../../etc/evil.history.npy" in m for m in messages)
    assert any("absolute path" in m for m in messages)
    assert any("not a regular file" in m for m in messages)
    assert manifest["splits"]["train"]["samples"] == 1 and ds.stats["corrupt_shards"] == 0


def test_path_traversal_raises_in_strict_mode(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [1]})
    malicious_shard(tmp_path / "shards" / "train" / "train-000000.tar")

    with pytest.raises(ShardError, match=r"train-000000.tar.*\.\./\.\./etc/evil"):
        read_all(tmp_path, strict=True)


def test_undecodable_sample_is_skipped_and_counted(tmp_path: Path) -> None:
    manifest = write_out_dir(tmp_path, {"train": [1]})
    good = [(f"a.{s}", data) for s, data in encode_sample(make_sample(1))]
    broken = [(f"b.{s}", data) for s, data in encode_sample(make_sample(2)) if s != "history.npy"]
    (tmp_path / "shards" / "train" / "train-000000.tar").write_bytes(tar_bytes(good + broken))
    manifest["splits"]["train"]["shards"][0]["samples"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.warns(RuntimeWarning, match="missing member 'history.npy'"):
        ds, batches = read_all(tmp_path)

    assert [u for b in batches for u in b.users] == ["user0001"]
    assert ds.stats["bad_samples"] == 1


def test_constructor_rejects_bad_arguments() -> None:
    shards = [ShardSpec("x.tar", 1)]
    with pytest.raises(ValueError, match="view"):
        LifeseqDataset(shards, view="sequence")
    with pytest.raises(ValueError, match="batch_size"):
        LifeseqDataset(shards, batch_size=0)
    with pytest.raises(ValueError, match="rank 2 / world_size 2"):
        LifeseqDataset(shards, rank=2, world_size=2)


def test_from_manifest_refuses_other_schema_version(out_dir) -> None:
    root, manifest = out_dir
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ValueError, match="schema_version 3 is not the shard format"):
        LifeseqDataset.from_manifest(str(root), "train")


def test_a_format_v1_build_is_refused_with_the_command_that_rebuilds_it(out_dir) -> None:
    root, manifest = out_dir
    manifest["schema_version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ValueError, match=r"shard format v1 .* Rebuild it: lifeseq build"):
        LifeseqDataset.from_manifest(str(root), "train")


# --- format v2: every split read from the same shards ------------------------------------------


def mixed_record(user: int) -> UserRecord:
    """User `user` with 6 events and targets in the splits `user % 4` picks: 0 → train only,
    1 → train + valid, 2 → train + valid + test, 3 → test only."""
    history = {
        "item": np.arange(6, dtype=np.int64) + 10 * user + 2,
        "category": np.full(6, 2, dtype=np.int64),
        "behavior": np.full(6, 2, dtype=np.int64),
        "ts": np.arange(6, dtype=np.int64) * 60 + 1_700_000_000,
    }
    splits = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [2]}[user % 4]
    hist_len = {0: 2, 1: 4, 2: 6}
    targets = {
        "target_item": np.array([500 + user + s for s in splits], dtype=np.int64),
        "target_category": np.full(len(splits), 3, dtype=np.int64),
        "target_ts": np.array([1_700_000_000 + 60 * hist_len[s] for s in splits]),
        "target_label": np.array([1.0] * len(splits), dtype=np.float32),
        "target_hist_len": np.array([hist_len[s] for s in splits], dtype=np.int64),
        "target_split": np.array(splits, dtype=np.int64),
    }
    return UserRecord(user=f"user{user:04d}", history=history, targets=targets)


def write_mixed_build(root: Path, users: int = 14, per_shard: int = 4) -> list[UserRecord]:
    """A build as the pipeline writes it: users of every split mixed in `shard-NNNNNN.tar`,
    listed per shard and per split by `pipeline.manifest.split_listing`."""
    from lifeseq.pipeline.manifest import split_listing

    records = [mixed_record(u) for u in range(users)]
    layout = RecordLayout.for_build(VOCAB, 100, 10**9, with_value=False)
    directory = root / "shards"
    writer = ShardWriter(str(directory), "part", per_shard, 1 << 40, layout)
    for number, record in enumerate(records):
        writer.write(f"s{number:06d}", record)
    listing = []
    for number, info in enumerate(writer.close()):
        name = f"shard-{number:06d}.tar"
        Path(info.path).rename(directory / name)
        splits = {split: asdict(counts) for split, counts in info.splits.items()}
        listing.append(
            {"name": name, "samples": info.samples, "bytes": info.bytes, "splits": splits}
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "vocab": VOCAB,
        "members": layout.members(),
        "shards": listing,
        "splits": split_listing(listing),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return records


@pytest.mark.parametrize("split", SPLITS)
def test_each_split_is_read_from_the_same_shards_exactly_once(tmp_path: Path, split: str) -> None:
    records = write_mixed_build(tmp_path)
    expected = {r.user: r.split_sample(split) for r in records if r.split_sample(split)}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["splits"][split]["samples"] == len(expected)

    seen: dict[str, object] = {}
    for rank in range(2):
        for worker in range(2):
            ds = LifeseqDataset.from_manifest(
                str(tmp_path), split, batch_size=2, rank=rank, world_size=2, num_workers=2,
                shuffle=split == "train", strict=True,
            )  # fmt: skip
            batches = list(ds.iter_worker(worker))
            assert len(batches) == ds.plan().batches[rank][worker]
            for batch in batches:
                for user in batch.users:
                    assert user not in seen
                    seen[user] = batch
            assert ds.stats["bad_samples"] == ds.stats["corrupt_shards"] == 0

    assert sorted(seen) == sorted(expected)  # users without targets of the split: passed over
    for user, sample in expected.items():
        batch = seen[user]
        row = batch.users.index(user)
        assert batch.history["item"].lengths[row] == sample.history["item"].shape[0]


def test_a_split_reads_only_the_history_its_targets_need(tmp_path: Path) -> None:
    write_mixed_build(tmp_path)
    lengths = {}
    for split in SPLITS:
        ds = LifeseqDataset.from_manifest(str(tmp_path), split, batch_size=20, shuffle=False)
        for batch in ds.iter_worker(0):
            lengths[split] = {u: int(n) for u, n in zip(batch.users, batch.history["item"].lengths, strict=True)}  # fmt: skip

    assert lengths["train"]["user0002"] == 2  # train's target needs 2 events of 6 stored
    assert lengths["valid"]["user0002"] == 4
    assert lengths["test"]["user0002"] == 6
    assert "user0003" not in lengths["train"] and lengths["test"]["user0003"] == 6
