"""Tests of the shard sample format (`pipeline.sample_codec`): round trip, bytes, validation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lifeseq.pipeline.sample_codec import (
    HISTORY_MEMBERS,
    META_MEMBER,
    SPLITS,
    TARGET_MEMBERS,
    RecordLayout,
    UserRecord,
    UserSample,
    decode_record,
    decode_split,
    encode_record,
    narrowest_id_dtype,
    npy_bytes,
    npy_load,
    validate_record,
    validate_sample,
)

pytestmark = pytest.mark.unit

LAYOUT = RecordLayout.for_build(
    {"item": 300, "category": 50, "behavior": 6}, max_history=100, ts_span=10**9, with_value=True
)


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


def make_record(with_value: bool = True) -> UserRecord:
    """A user with 5 events at epoch ~1.7e9 and targets in train (2), valid (0) and test (1)."""
    base = 1_700_000_000
    history = {
        "item": np.array([5, 6, 7, 260, 8], dtype=np.int64),
        "category": np.array([1, 1, 2, 40, 3], dtype=np.int64),
        "behavior": np.array([2, 3, 2, 5, 4], dtype=np.int64),
        "ts": base + np.array([10, 10, 20, 25, 90], dtype=np.int64),
    }
    if with_value:
        history["value"] = np.array([1.5, 2.0, 0.25, -3.0, 7.125], dtype=np.float32)
    targets = {
        "target_item": np.array([7, 299, 8], dtype=np.int64),
        "target_category": np.array([2, 49, 3], dtype=np.int64),
        "target_ts": base + np.array([20, 20, 90], dtype=np.int64),
        "target_label": np.array([1.0, 0.0, 1.0], dtype=np.float32),
        "target_hist_len": np.array([2, 2, 4], dtype=np.int64),
        "target_split": np.array([0, 0, 2], dtype=np.int64),
    }
    return UserRecord(user="user-42", history=history, targets=targets)


def assert_samples_equal(a: UserSample, b: UserSample) -> None:
    """Same user, split, member names, dtypes and values."""
    assert (a.user, a.split) == (b.user, b.split)
    for ours, theirs in ((a.history, b.history), (a.targets, b.targets)):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name].dtype == theirs[name].dtype, name
            np.testing.assert_array_equal(ours[name], theirs[name])


# --- layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "dtype"),
    [(2, "uint8"), (256, "uint8"), (257, "uint16"), (65_536, "uint16"), (65_537, "uint32"),
     (2**32, "uint32"), (2**32 + 1, "int64")],
)  # fmt: skip
def test_narrowest_id_dtype_holds_every_id_below_the_bound(bound: int, dtype: str) -> None:
    assert str(narrowest_id_dtype(bound)) == dtype
    assert np.iinfo(narrowest_id_dtype(bound)).max >= bound - 1


def test_layout_for_a_build_picks_the_narrowest_dtypes() -> None:
    layout = RecordLayout.for_build(
        {"item": 81_542, "category": 202, "behavior": 6}, 100_000, 4_102_444_799, True
    )
    assert layout.members() == {
        "behavior": "uint8", "category": "uint8", "item": "uint32", "target_category": "uint8",
        "target_hist_len": "uint32", "target_item": "uint32", "target_label": "uint8",
        "target_split": "uint8", "target_ts": "uint32", "ts": "uint32", "value": "float32",
    }  # fmt: skip
    assert layout.history_dtype().itemsize == 4 + 1 + 1 + 4 + 4  # packed: 14 B per event
    wide = RecordLayout.for_build({"item": 2**40, "category": 9, "behavior": 9}, 10, 2**32, False)
    assert (str(wide.item), str(wide.ts), str(wide.hist_len)) == ("int64", "int64", "uint8")


# --- encode / decode --------------------------------------------------------------------------


@pytest.mark.parametrize("with_value", [False, True])
def test_record_round_trip_is_exact(with_value: bool) -> None:
    record = make_record(with_value)
    layout = RecordLayout.for_build(
        {"item": 300, "category": 50, "behavior": 6}, 100, 10**9, with_value
    )
    validate_record(record)

    decoded = decode_record(dict(encode_record(record, layout)))

    assert decoded.user == record.user
    for ours, theirs in ((decoded.history, record.history), (decoded.targets, record.targets)):
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_each_split_decodes_to_its_targets_and_the_history_they_need() -> None:
    record = make_record()
    raw = dict(encode_record(record, LAYOUT))

    train, valid, test = (decode_split(raw, split) for split in SPLITS)

    assert valid is None  # no valid target: the loader passes the user over
    assert_samples_equal(train, record.split_sample("train"))
    assert_samples_equal(test, record.split_sample("test"))
    assert train.history["item"].tolist() == [5, 6]  # only the prefix its targets need
    assert test.history["item"].tolist() == [5, 6, 7, 260]
    assert train.targets["target_label"].dtype == np.float32
    validate_sample(train)
    validate_sample(test)


def test_members_are_meta_targets_history_with_narrow_packed_records() -> None:
    members = encode_record(make_record(), LAYOUT)

    assert [name for name, _ in members] == ["meta.json", "targets.npy", "history.npy"]
    raw = dict(members)
    assert json.loads(raw[META_MEMBER]) == {"ts_base": 1_700_000_010, "user": "user-42"}
    history = npy_load(raw["history.npy"])
    assert history.dtype == LAYOUT.history_dtype() and history.dtype.itemsize == 2 + 1 + 1 + 4 + 4
    assert history["ts"].tolist() == [0, 0, 10, 15, 80]  # seconds after ts_base
    targets = npy_load(raw["targets.npy"])
    assert targets["target_split"].tolist() == [0, 0, 2]
    assert targets["target_label"].dtype == np.uint8


def test_record_from_per_split_samples_gives_them_back() -> None:
    train, test = make_sample(split="train"), make_sample(with_value=False, split="test")
    test.targets["target_hist_len"] = np.array([1, 1], dtype=np.int64)

    record = UserRecord.from_samples([test, train])

    assert record.targets["target_split"].tolist() == [0, 0, 2, 2]
    assert_samples_equal(record.split_sample("train"), train)
    back = record.split_sample("test")
    assert back.history["item"].tolist() == [5]
    assert record.split_sample("valid") is None


def test_encode_refuses_values_the_layout_cannot_hold_and_non_binary_labels() -> None:
    record = make_record()
    record.targets["target_category"][1] = 256  # 50 categories: stored as uint8
    with pytest.raises(ValueError, match=r"user-42.*target_category values \[2, 256\].*uint8"):
        encode_record(record, LAYOUT)

    record = make_record()
    record.targets["target_label"][0] = 0.5
    with pytest.raises(ValueError, match="target_label values must be 0 or 1"):
        encode_record(record, LAYOUT)


def test_decode_missing_member_names_it() -> None:
    raw: dict[str, object] = dict(encode_record(make_record(), LAYOUT))
    del raw["history.npy"]
    raw["__key__"] = "k1"

    with pytest.raises(ValueError, match=r"'k1'.*missing member 'history\.npy'"):
        decode_split(raw, "train")
    assert decode_split(raw, "valid") is None  # no valid target: its history is never read


def test_decode_missing_or_bad_meta_names_it() -> None:
    raw = dict(encode_record(make_record(), LAYOUT))
    del raw[META_MEMBER]
    with pytest.raises(ValueError, match="missing member 'meta.json'"):
        decode_split(raw, "train")
    raw[META_MEMBER] = b'{"user": "u"}'
    with pytest.raises(ValueError, match="bad meta.json"):
        decode_split(raw, "train")


@pytest.mark.parametrize(
    ("member", "array", "message"),
    [
        ("history.npy", np.arange(5), "expected a 1-D structured array"),
        ("history.npy", np.zeros(5, [("item", "u4"), ("category", "u1"), ("behavior", "u1")]),
         r"fields missing \['ts'\]"),
        ("history.npy", np.zeros(5, [("item", "f4"), ("category", "u1"), ("behavior", "u1"),
                                     ("ts", "u4")]), "field 'item' has dtype float32"),
        ("targets.npy", np.zeros(3, [(n, "u4") for n in TARGET_MEMBERS] + [("dwell", "u4"),
                                                                          ("target_split", "u1")]),
         r"unknown \['dwell'\]"),
    ],
)  # fmt: skip
def test_decode_wrong_member_layout_names_it(member: str, array: np.ndarray, message: str) -> None:
    raw = dict(encode_record(make_record(), LAYOUT))
    raw[member] = npy_bytes(array)

    with pytest.raises(ValueError, match=message):
        decode_record(raw)


def test_decode_refuses_a_target_history_longer_than_stored() -> None:
    record = make_record()
    raw = dict(encode_record(record, LAYOUT))
    record.history = {name: a[:3] for name, a in record.history.items()}
    raw["history.npy"] = dict(encode_record(record, LAYOUT))["history.npy"]

    with pytest.raises(ValueError, match="target_hist_len 4 exceeds the 3 stored"):
        decode_split(raw, "test")


def test_decode_refuses_pickled_members() -> None:
    raw = dict(encode_record(make_record(), LAYOUT))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    raw["targets.npy"] = buffer.getvalue()

    with pytest.raises(ValueError, match="without objects"):
        decode_split(raw, "train")


def test_validate_record_rejects_a_split_index_out_of_range() -> None:
    record = make_record()
    record.targets["target_split"][0] = 3

    with pytest.raises(ValueError, match=r"target_split outside \[0, 2\]"):
        validate_record(record)


# --- .npy bytes -------------------------------------------------------------------------------


def test_npy_bytes_are_deterministic_and_layout_independent() -> None:
    base = np.arange(20, dtype=np.int64)
    strided = np.arange(40, dtype=np.int64)[::2] // 2  # same values, non-contiguous source

    assert npy_bytes(base) == npy_bytes(base.copy()) == npy_bytes(np.ascontiguousarray(strided))
    assert encode_record(make_record(), LAYOUT) == encode_record(make_record(), LAYOUT)
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
