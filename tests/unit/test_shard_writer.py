"""Tests of deterministic WebDataset shard writing (`pipeline.shard_writer`)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lifeseq.pipeline.sample_codec import RecordLayout, UserRecord, decode_record, encode_record
from lifeseq.pipeline.shard_writer import (
    ShardInfo,
    ShardWriter,
    SplitCounts,
    closed_tar_size,
    encoded_sample_size,
    tar_member_size,
)

pytestmark = pytest.mark.unit

LAYOUT = RecordLayout.for_build(
    {"item": 70_000, "category": 8, "behavior": 3}, max_history=5000, ts_span=10**6, with_value=True
)


def make_record(user: int, history_len: int = 4) -> UserRecord:
    """A valid record of `history_len` events and three targets: a positive and a negative in
    train, a positive in test."""
    ts = np.arange(history_len, dtype=np.int64) * 10
    history = {
        "item": np.arange(history_len, dtype=np.int64) + 100 * user,
        "category": np.arange(history_len, dtype=np.int64) % 7,
        "behavior": np.full(history_len, 2, dtype=np.int64),
        "ts": ts,
        "value": np.linspace(0, 1, history_len, dtype=np.float32),
    }
    end = history_len * 10
    targets = {
        "target_item": np.array([user + 5, user + 6, user + 7], dtype=np.int64),
        "target_category": np.array([3, 4, 5], dtype=np.int64),
        "target_ts": np.array([end, end, end + 5], dtype=np.int64),
        "target_label": np.array([1.0, 0.0, 1.0], dtype=np.float32),
        "target_hist_len": np.array([history_len - 1, history_len - 1, history_len]),
        "target_split": np.array([0, 0, 2], dtype=np.int64),
    }
    return UserRecord(user=f"user{user}", history=history, targets=targets)


def record_bytes(record: UserRecord) -> int:
    """Tar bytes the members of `record` take (headers + padded payloads)."""
    return encoded_sample_size(encode_record(record, LAYOUT))


def write_all(
    directory: Path,
    records: list[UserRecord],
    max_samples: int = 100,
    max_bytes: int = 1 << 30,
    **kwargs: str,
) -> list[ShardInfo]:
    """Write `records` under keys `u000`, `u001`, ... and return the shards."""
    writer = ShardWriter(str(directory), "part-00000", max_samples, max_bytes, LAYOUT, **kwargs)
    for i, record in enumerate(records):
        writer.write(f"u{i:03d}", record)
    return writer.close()


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_back(path: str) -> list[tuple[str, UserRecord]]:
    """(key, record) pairs of a shard, read with WebDataset in file order."""
    dataset = wds.WebDataset(path, shardshuffle=False)
    return [(raw["__key__"], decode_record(raw)) for raw in dataset]


def assert_records_equal(a: UserRecord, b: UserRecord) -> None:
    assert a.user == b.user
    for ours, theirs in ((a.history, b.history), (a.targets, b.targets)):
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])


# --- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_same_samples_give_byte_identical_shards(tmp_path: Path, compression: str) -> None:
    records = [make_record(u, history_len=3 + u) for u in range(5)]

    first = write_all(tmp_path / "a", records, max_samples=2, compression=compression)
    second = write_all(tmp_path / "b", records, max_samples=2, compression=compression)

    assert len(first) == len(second) == 3
    for one, two in zip(first, second, strict=True):
        assert Path(one.path).name == Path(two.path).name
        assert Path(one.path).read_bytes() == Path(two.path).read_bytes()
        assert one.sha256 == two.sha256 == file_sha256(one.path)
        assert one.bytes == Path(one.path).stat().st_size


def test_shard_info_counts_and_names(tmp_path: Path) -> None:
    shards = write_all(tmp_path, [make_record(u) for u in range(5)], max_samples=2)

    assert [Path(s.path).name for s in shards] == [
        "part-00000-000000.tar",
        "part-00000-000001.tar",
        "part-00000-000002.tar",
    ]
    assert [Path(s.path).parent for s in shards] == [tmp_path] * 3
    assert [s.samples for s in shards] == [2, 2, 1]
    assert [s.splits for s in shards] == [
        {"train": SplitCounts(2, 4, 2, 2), "valid": SplitCounts(), "test": SplitCounts(2, 2, 2, 0)},
        {"train": SplitCounts(2, 4, 2, 2), "valid": SplitCounts(), "test": SplitCounts(2, 2, 2, 0)},
        {"train": SplitCounts(1, 2, 1, 1), "valid": SplitCounts(), "test": SplitCounts(1, 1, 1, 0)},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(s.path).name for s in shards]


def test_close_without_samples_writes_nothing(tmp_path: Path) -> None:
    assert write_all(tmp_path / "out", []) == []
    assert list((tmp_path / "out").iterdir()) == []


# --- rollover ---------------------------------------------------------------------------------


def test_rollover_by_max_samples(tmp_path: Path) -> None:
    shards = write_all(tmp_path, [make_record(u) for u in range(7)], max_samples=3)

    assert [s.samples for s in shards] == [3, 3, 1]


def test_rollover_by_max_bytes(tmp_path: Path) -> None:
    records = [make_record(u, history_len=400) for u in range(5)]
    size = record_bytes(records[0])
    assert all(record_bytes(r) == size for r in records)

    max_bytes = closed_tar_size(2 * size)
    shards = write_all(tmp_path, records, max_bytes=max_bytes)

    assert [s.samples for s in shards] == [2, 2, 1]
    assert all(Path(s.path).stat().st_size == s.bytes <= max_bytes for s in shards)
    assert [s.samples for s in write_all(tmp_path / "tight", records, max_bytes=max_bytes - 1)] == [
        1,
        1,
        1,
        1,
        1,
    ]


def test_closed_tar_size_counts_end_blocks_and_record_padding() -> None:
    assert closed_tar_size(0) == 10240
    assert closed_tar_size(10240 - 1024) == 10240
    assert closed_tar_size(10240 - 1023) == 20480


def test_sample_larger_than_max_bytes_gets_its_own_shard(tmp_path: Path) -> None:
    small, big = make_record(0), make_record(1, history_len=2000)
    max_bytes = closed_tar_size(2 * record_bytes(small))
    assert record_bytes(big) > max_bytes

    shards = write_all(tmp_path, [small, small, big, small, small], max_bytes=max_bytes)

    assert [s.samples for s in shards] == [2, 1, 2]
    assert [key for key, _ in read_back(shards[1].path)] == ["u002"]


def test_tar_member_size_accounts_header_and_padding() -> None:
    assert tar_member_size(0) == 512
    assert tar_member_size(1) == 1024
    assert tar_member_size(512) == 1024
    assert tar_member_size(513) == 1536


def test_encoded_sample_size_matches_tar_offsets(tmp_path: Path) -> None:
    records = [make_record(0, 3), make_record(1, 300)]
    (shard,) = write_all(tmp_path, records)

    with tarfile.open(shard.path) as tar:
        members = tar.getmembers()
    end_of_members = members[-1].offset_data + -(-members[-1].size // 512) * 512
    assert end_of_members == sum(record_bytes(r) for r in records)


# --- read back --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_webdataset_reads_back_equal_records_in_write_order(
    tmp_path: Path, compression: str
) -> None:
    records = [make_record(u, history_len=1 + 3 * u) for u in range(6)]
    shards = write_all(tmp_path, records, max_samples=4, compression=compression)

    read = [pair for shard in shards for pair in read_back(shard.path)]

    assert [key for key, _ in read] == [f"u{i:03d}" for i in range(6)]
    for (_, got), expected in zip(read, records, strict=True):
        assert_records_equal(got, expected)


@pytest.mark.parametrize("key", ["user.1", "a/b"])
def test_keys_with_dot_or_slash_are_rejected(tmp_path: Path, key: str) -> None:
    writer = ShardWriter(str(tmp_path), "part", 10, 1 << 20, LAYOUT)

    with pytest.raises(ValueError, match="must not contain"):
        writer.write(key, make_record(0))
    assert writer.close() == []


def test_tar_members_have_fixed_metadata(tmp_path: Path) -> None:
    (shard,) = write_all(tmp_path, [make_record(0), make_record(1)])

    with tarfile.open(shard.path) as tar:
        members = tar.getmembers()
    suffixes = [name for name, _ in encode_record(make_record(0), LAYOUT)]
    assert [m.name for m in members] == [f"u{i:03d}.{s}" for i in range(2) for s in suffixes]
    for member in members:
        assert member.isreg()
        assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o444)
        assert (member.uname, member.gname) == ("", "")


def test_a_value_the_layout_cannot_hold_is_refused_naming_it(tmp_path: Path) -> None:
    record = make_record(0)
    record.history["category"][1] = 300  # 8 categories: stored as uint8
    writer = ShardWriter(str(tmp_path), "part", 10, 1 << 20, LAYOUT)

    with pytest.raises(
        ValueError, match=r"user0.*category values \[0, 300\] do not fit the layout's uint8"
    ):
        writer.write("u000", record)
