"""Tests of the shard reading stages (`features.tar_reader`) and the dataset's `handler=` error
policy on top of them: lenient mode counts, warns and reads on; strict mode raises `ShardError`
naming the shard.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import warnings
from pathlib import Path

import pytest

from lifeseq.features.dataset import LifeseqDataset
from lifeseq.features.tar_reader import (
    CORRUPT_ERRORS,
    MemberError,
    ShardError,
    iter_tar_samples,
    open_shard,
    tar_members,
)
from tests.unit.test_dataset import encode_sample, make_sample, tar_bytes, users_of, write_out_dir

pytestmark = pytest.mark.unit


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    """A non-regular member header (symlink, hard link, device, fifo)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info


def collect(data: bytes, url: str = "s.tar") -> tuple[list[dict], list[MemberError]]:
    """Samples of `data` with a handler that records each problem and skips it."""
    problems: list[MemberError] = []

    def handler(exn: Exception) -> bool:
        assert isinstance(exn, MemberError), exn
        problems.append(exn)
        return True

    return list(iter_tar_samples(io.BytesIO(data), url, handler)), problems


# --- the stages ----------------------------------------------------------------------------------


def test_members_are_grouped_by_key_into_samples() -> None:
    data = tar_bytes(
        [("a.meta.json", b"1"), ("a.history.npy", b"2"), ("d/b.meta.json", b"3"), ("c.x.y", b"4")]
    )
    samples, problems = collect(data)
    assert problems == []
    assert samples == [
        {"__key__": "a", "__url__": "s.tar", "meta.json": b"1", "history.npy": b"2"},
        {"__key__": "d/b", "__url__": "s.tar", "meta.json": b"3"},
        {"__key__": "c", "__url__": "s.tar", "x.y": b"4"},
    ]


def test_gzipped_tar_is_detected() -> None:
    samples, _ = collect(gzip.compress(tar_bytes([("a.meta.json", b"1")])))
    assert samples == [{"__key__": "a", "__url__": "s.tar", "meta.json": b"1"}]


@pytest.mark.parametrize(
    "entry, reason",
    [
        (("../../etc/evil.meta.json", b"x"), "'..' path component"),
        (("/tmp/abs.meta.json", b"x"), "absolute path"),
        (special("a.link.npy", tarfile.SYMTYPE), "not a regular file"),
        (special("a.hard.npy", tarfile.LNKTYPE), "not a regular file"),
        (special("a.dev.npy", tarfile.CHRTYPE), "not a regular file"),
        (special("a.fifo.npy", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_unsafe_members_reach_the_handler_and_are_not_read(entry, reason: str) -> None:
    """WebDataset's `tar_file_iterator` would drop the non-regular ones silently."""
    samples, problems = collect(tar_bytes([("a.meta.json", b"1"), entry, ("a.targets.npy", b"2")]))
    assert samples == [{"__key__": "a", "__url__": "s.tar", "meta.json": b"1", "targets.npy": b"2"}]
    assert [(p.stat, reason in p.reason) for p in problems] == [("unsafe_members", True)]


def test_members_without_suffix_or_with_a_duplicate_suffix_reach_the_handler() -> None:
    data = tar_bytes(
        [("a.meta.json", b"1"), ("README", b"?"), ("a.meta.json", b"dup"), ("b.meta.json", b"2")]
    )
    samples, problems = collect(data)
    assert [s["meta.json"] for s in samples] == [b"1", b"2"]  # the first copy wins
    assert [(p.stat, p.name) for p in problems] == [
        ("bad_members", "README"),
        ("bad_members", "a.meta.json"),
    ]
    assert "no '.suffix'" in problems[0].reason
    assert problems[1].reason == "duplicate member 'meta.json' in sample 'a'"


def test_the_default_handler_raises() -> None:
    data = tar_bytes([("a.meta.json", b"1"), ("../x.meta.json", b"2")])
    with pytest.raises(MemberError, match=r"\.\./x\.meta\.json"):
        list(iter_tar_samples(io.BytesIO(data), "s.tar"))


def test_a_handler_returning_false_stops_the_shard() -> None:
    data = tar_bytes([("a.meta.json", b"1"), special("l.npy", tarfile.SYMTYPE), ("b.x", b"2")])
    files = list(tar_members(io.BytesIO(data), "s.tar", lambda exn: False))
    assert [f["fname"] for f in files] == ["a.meta.json"]


def test_truncated_stream_raises_a_corrupt_error_after_the_complete_samples() -> None:
    data = tar_bytes([(f"s{i}.meta.json", bytes(3000)) for i in range(4)])
    cut = 2 * (512 + 3072) + 512 + 1000  # inside s2's data: s1 is still being assembled
    stream = iter_tar_samples(io.BytesIO(data[:cut]), "s.tar")
    assert next(stream)["__key__"] == "s0"
    with pytest.raises(CORRUPT_ERRORS):
        next(stream)


def test_open_shard_reads_local_paths_and_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"abc")
    for url in (str(path), f"file://{path}"):
        with open_shard(url) as handle:
            assert handle.read() == b"abc"
    with pytest.raises(FileNotFoundError):
        open_shard(str(tmp_path / "missing.tar"))


# --- the dataset's error policy ------------------------------------------------------------------


def read(root: Path, strict: bool = False) -> tuple[LifeseqDataset, list[str]]:
    """Every train user one worker of `root`'s dataset reads, in manifest order."""
    ds = LifeseqDataset.from_manifest(
        str(root), "train", batch_size=2, strict=strict, shuffle=False
    )
    return ds, [u for b in ds.iter_worker(0) for u in b.users]


def truncate_in_third_sample(path: Path) -> None:
    """Cut a shard inside the first member of its third sample (the stream breaks off while
    that sample is assembled, so the first two are read)."""
    with tarfile.open(path) as tar:
        start = next(m for m in tar.getmembers() if m.name.startswith("s000005.")).offset_data
    path.write_bytes(path.read_bytes()[: start + 100])


def test_lenient_truncated_shard_is_counted_and_the_other_shards_are_read(tmp_path: Path) -> None:
    manifest = write_out_dir(tmp_path, {"train": [3, 4, 2]})
    path = tmp_path / "shards" / "train" / "train-000001.tar"
    truncate_in_third_sample(path)

    with pytest.warns(RuntimeWarning, match=r"train-000001\.tar is damaged.*read 2 of 4"):
        ds, users = read(tmp_path)

    everyone = users_of(manifest)
    assert users == everyone[:3] + everyone[3:5] + everyone[7:]
    assert ds.stats["corrupt_shards"] == 1 and ds.stats["missing_samples"] == 2
    assert ds.stats["shards"] == 3


def test_strict_truncated_shard_raises_shard_error_naming_it(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [3, 4, 2]})
    truncate_in_third_sample(tmp_path / "shards" / "train" / "train-000001.tar")

    with pytest.raises(ShardError, match=r"train-000001\.tar is damaged"):
        read(tmp_path, strict=True)


def bad_member_shard(root: Path) -> None:
    """One shard: user 0 whole plus a device member, a member without suffix and a duplicate."""
    members = [(f"s0.{suffix}", data) for suffix, data in encode_sample(make_sample(0))]
    extra = [special("s0.dev.npy", tarfile.BLKTYPE), ("NOTES", b"hi"), members[0]]
    (root / "shards" / "train" / "train-000000.tar").write_bytes(tar_bytes(members + extra))


def test_lenient_unsafe_and_bad_members_are_counted_and_the_sample_kept(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [1]})
    bad_member_shard(tmp_path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, users = read(tmp_path)

    messages = [str(w.message) for w in caught]
    assert users == ["user0000"]
    assert ds.stats["unsafe_members"] == 1 and ds.stats["bad_members"] == 2
    assert ds.stats["corrupt_shards"] == 0
    assert any("rejected tar member 's0.dev.npy': not a regular file" in m for m in messages)
    assert any("skipped tar member 'NOTES'" in m for m in messages)
    assert all("train-000000.tar" in m for m in messages)


def test_strict_unsafe_member_raises_shard_error_naming_the_shard(tmp_path: Path) -> None:
    write_out_dir(tmp_path, {"train": [1]})
    bad_member_shard(tmp_path)

    with pytest.raises(ShardError, match=r"train-000000\.tar: rejected tar member 's0\.dev\.npy'"):
        read(tmp_path, strict=True)
