"""Tests of the shard sample format (`pipeline.sample_codec`): round trip, bytes, validation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline.sample_codec import (
    HISTORY_MEMBERS,
    META_MEMBER,
    TARGET_MEMBERS,
    UserSample,
    decode_members,
    encode_members,
    npy_bytes,
    npy_load,
    validate_sample,
)

pytestmark = pytest.mark.unit


def make_sample(with_value: bool = False, split: str = "train") -> UserSample:
    """A valid sample: 3 history events (two share ts 10) and 2 targets."""
    history = {
        "item": np.array([5, 6, 7], dtype=np.int64),
        "category": np.array([1, 1, 2], dtype=np.int64),
        "behavior": np.array([2, 3, 2], dtype=np.int64),
        "ts": np.array([10, 10, 20], dtype=np.int64),
    }
    if with_value:
        history["value"] = np.array([1.5, 2.0, 0.25], dtype=np.float32)
    targets = {
        "target_item": np.array([8, 9], dtype=np.int64),
        "target_category": np.array([2, 3], dtype=np.int64),
        "target_ts": np.array([20, 30], dtype=np.int64),
        "target_label": np.array([1.0, 0.0], dtype=np.float32),
        "target_hist_len": np.array([2, 3], dtype=np.int64),
    }
    return UserSample(user="user-42", split=split, history=history, targets=targets)


def assert_samples_equal(a: UserSample, b: UserSample) -> None:
    """Same user, split, member names, dtypes and values."""
    assert (a.user, a.split) == (b.user, b.split)
    for ours, theirs in ((a.history, b.history), (a.targets, b.targets)):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name].dtype == theirs[name].dtype, name
            np.testing.assert_array_equal(ours[name], theirs[name])


# --- encode / decode --------------------------------------------------------------------------


@pytest.mark.parametrize("with_value", [False, True])
def test_encode_decode_round_trip(with_value: bool) -> None:
    sample = make_sample(with_value)
    validate_sample(sample)

    decoded = decode_members(dict(encode_members(sample)))

    assert_samples_equal(decoded, sample)
    assert ("value" in decoded.history) is with_value
    assert decoded.num_targets == 2


def test_encoded_member_order_and_meta() -> None:
    members = encode_members(make_sample(with_value=True, split="valid"))

    names = [name for name, _ in members]
    assert names == [
        "item.npy",
        "category.npy",
        "behavior.npy",
        "ts.npy",
        "value.npy",
        "target_item.npy",
        "target_category.npy",
        "target_ts.npy",
        "target_label.npy",
        "target_hist_len.npy",
        "meta.json",
    ]
    assert json.loads(dict(members)[META_MEMBER]) == {"split": "valid", "user": "user-42"}


def test_decode_accepts_webdataset_style_dict_with_key_and_arrays() -> None:
    sample = make_sample()
    raw: dict[str, object] = dict(encode_members(sample))
    raw["__key__"] = "p00000-000000001"
    raw["item.npy"] = bytearray(raw["item.npy"])  # type: ignore[arg-type]
    raw["ts.npy"] = sample.history["ts"]  # already decoded
    raw[META_MEMBER] = {"user": "user-42", "split": "train"}

    assert_samples_equal(decode_members(raw), sample)


def test_decode_missing_member_names_it() -> None:
    raw = dict(encode_members(make_sample()))
    del raw["target_hist_len.npy"]
    raw["__key__"] = "k1"  # type: ignore[assignment]

    with pytest.raises(ValueError, match=r"'k1'.*'target_hist_len\.npy'"):
        decode_members(raw)


def test_decode_missing_meta_names_it() -> None:
    raw = dict(encode_members(make_sample()))
    del raw[META_MEMBER]

    with pytest.raises(ValueError, match="meta.json"):
        decode_members(raw)


def test_decode_wrong_dtype_names_member() -> None:
    raw = dict(encode_members(make_sample()))
    raw["category.npy"] = npy_bytes(np.array([1, 1, 2], dtype=np.int32))

    with pytest.raises(ValueError, match=r"'category\.npy'.*int64.*int32"):
        decode_members(raw)


# --- .npy bytes -------------------------------------------------------------------------------


def test_npy_bytes_are_deterministic_and_layout_independent() -> None:
    base = np.arange(20, dtype=np.int64)
    strided = np.arange(40, dtype=np.int64)[::2] // 2  # same values, non-contiguous source

    assert npy_bytes(base) == npy_bytes(base.copy()) == npy_bytes(np.ascontiguousarray(strided))
    assert encode_members(make_sample()) == encode_members(make_sample())
    np.testing.assert_array_equal(npy_load(npy_bytes(base)), base)


def test_npy_bytes_are_plain_npy_format() -> None:
    data = npy_bytes(np.array([1, 2, 3], dtype=np.int64))

    assert data.startswith(b"\x93NUMPY")
    np.testing.assert_array_equal(np.load(io.BytesIO(data), allow_pickle=False), [1, 2, 3])


def test_npy_load_refuses_pickled_object_arrays() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)

    with pytest.raises(ValueError, match="allow_pickle"):
        npy_load(buffer.getvalue())


def test_npy_bytes_refuses_object_arrays() -> None:
    with pytest.raises(ValueError):
        npy_bytes(np.array(["a", None], dtype=object))


# --- validate_sample --------------------------------------------------------------------------


def test_member_tables_match_design() -> None:
    assert list(HISTORY_MEMBERS) == ["item", "category", "behavior", "ts"]
    assert all(dtype == np.int64 for dtype in HISTORY_MEMBERS.values())
    assert TARGET_MEMBERS["target_label"] == np.float32
    assert {n for n, d in TARGET_MEMBERS.items() if d == np.int64} == {
        "target_item",
        "target_category",
        "target_ts",
        "target_hist_len",
    }


def test_validate_accepts_equal_ts_and_empty_history() -> None:
    validate_sample(make_sample(with_value=True))
    sample = make_sample()
    sample.history = {name: a[:0] for name, a in sample.history.items()}
    sample.targets["target_hist_len"] = np.zeros(2, dtype=np.int64)
    validate_sample(sample)


def test_validate_rejects_wrong_history_dtype() -> None:
    sample = make_sample()
    sample.history["item"] = sample.history["item"].astype(np.int32)

    with pytest.raises(ValueError, match=r"'item'.*int64.*int32"):
        validate_sample(sample)


def test_validate_rejects_wrong_target_dtype() -> None:
    sample = make_sample()
    sample.targets["target_label"] = sample.targets["target_label"].astype(np.float64)

    with pytest.raises(ValueError, match=r"'target_label'.*float32.*float64"):
        validate_sample(sample)


def test_validate_rejects_wrong_value_dtype() -> None:
    sample = make_sample(with_value=True)
    sample.history["value"] = sample.history["value"].astype(np.float64)

    with pytest.raises(ValueError, match=r"'value'.*float32"):
        validate_sample(sample)


def test_validate_rejects_2d_member() -> None:
    sample = make_sample()
    sample.targets["target_item"] = sample.targets["target_item"].reshape(2, 1)

    with pytest.raises(ValueError, match=r"'target_item'.*1-D"):
        validate_sample(sample)


@pytest.mark.parametrize("member", ["category", "value"])
def test_validate_rejects_mismatched_history_lengths(member: str) -> None:
    sample = make_sample(with_value=True)
    sample.history[member] = sample.history[member][:2]

    with pytest.raises(ValueError, match=r"user-42.*history members differ in length"):
        validate_sample(sample)


def test_validate_rejects_mismatched_target_lengths() -> None:
    sample = make_sample()
    sample.targets["target_ts"] = np.array([20], dtype=np.int64)

    with pytest.raises(ValueError, match="target members differ in length"):
        validate_sample(sample)


def test_validate_rejects_missing_members() -> None:
    sample = make_sample()
    del sample.history["behavior"]
    with pytest.raises(ValueError, match="missing history member 'behavior'"):
        validate_sample(sample)

    sample = make_sample()
    del sample.targets["target_category"]
    with pytest.raises(ValueError, match="missing target member 'target_category'"):
        validate_sample(sample)


def test_validate_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="'training'"):
        validate_sample(make_sample(split="training"))


def test_validate_rejects_non_monotonic_ts() -> None:
    sample = make_sample()
    sample.history["ts"] = np.array([10, 30, 20], dtype=np.int64)
    sample.targets["target_ts"] = np.array([40, 40], dtype=np.int64)

    with pytest.raises(ValueError, match="history ts is not non-decreasing"):
        validate_sample(sample)


@pytest.mark.parametrize("hist_len", [[2, 4], [-1, 3]])
def test_validate_rejects_target_hist_len_outside_history(hist_len: list[int]) -> None:
    sample = make_sample()
    sample.targets["target_hist_len"] = np.array(hist_len, dtype=np.int64)
    sample.targets["target_ts"] = np.array([100, 100], dtype=np.int64)

    with pytest.raises(ValueError, match=r"target_hist_len outside \[0, 3\]"):
        validate_sample(sample)


def test_validate_rejects_history_event_after_target_ts() -> None:
    sample = make_sample()
    sample.targets["target_ts"] = np.array([20, 15], dtype=np.int64)  # 2nd sees the ts-20 event

    with pytest.raises(ValueError, match="history has an event after its request time"):
        validate_sample(sample)
