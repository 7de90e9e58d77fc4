"""Tests of the strict pipeline config loader (`pipeline.config`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from lifeseq.jobs import build_lifelong
from lifeseq.pipeline.config import (
    PipelineConfig,
    config_from_dict,
    load_config,
    parse_epoch_seconds,
)

pytestmark = pytest.mark.unit

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pipeline"

# Epoch seconds (UTC) of the dates used in the shipped configs.
EPOCH_1990_01_01 = 631152000
EPOCH_2020_01_01 = 1577836800
EPOCH_2024_12_01 = 1733011200
EPOCH_2024_12_16 = 1734307200
EPOCH_2026_01_01 = 1767225600
EPOCH_2030_01_01 = 1893456000

LOO = {"split": "leave_one_out"}


def write_yaml(tmp_path: Path, data: Any, name: str = "pipeline.yaml") -> Path:
    """Dump `data` as YAML into `tmp_path / name`."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- shipped configs --------------------------------------------------------------------------


def test_synthetic_config_values() -> None:
    cfg = load_config(str(CONFIG_DIR / "synthetic.yaml"))

    assert cfg.input.format == "parquet"
    assert (cfg.input.ts_min, cfg.input.ts_max) == (EPOCH_2020_01_01, EPOCH_2026_01_01)
    assert cfg.behaviors.known == ["view", "click", "cart", "fav", "buy"]
    t = cfg.targets
    assert t.split == "time"
    assert (t.valid_start, t.test_start) == (EPOCH_2024_12_01, EPOCH_2024_12_16)
    assert t.positive_behaviors == ["click", "cart", "buy"]
    assert (t.negatives, t.negatives_per_positive, t.negative_sampling) == ("sampled", 1, "uniform")
    assert (t.min_history, t.max_targets_per_user, t.seed) == (1, None, 17)
    assert cfg.shards.max_bytes == 256 * 1024 * 1024
    assert (cfg.shards.partitions, cfg.shards.events_per_partition) == (0, 500_000)
    assert cfg.spark.master == "local[2]"
    assert "spark.driver.memory" in cfg.spark.conf


def test_movielens_config_values() -> None:
    cfg = load_config(str(CONFIG_DIR / "movielens.yaml"))

    assert cfg.input.format == "recbole_inter"
    assert (cfg.input.ts_min, cfg.input.ts_max) == (EPOCH_1990_01_01, EPOCH_2030_01_01)
    assert cfg.behaviors.known == ["rating"]
    assert cfg.validation.max_bad_fraction == 0.01
    t = cfg.targets
    assert (t.split, t.valid_start, t.test_start) == ("leave_one_out", None, None)
    assert t.positive_behaviors == ["rating"]
    assert (t.negatives, t.negatives_per_positive, t.min_history, t.seed) == ("none", 0, 1, 17)
    assert cfg.shards.partitions == 2


@pytest.mark.parametrize("name", ["synthetic.yaml", "movielens.yaml"])
def test_to_dict_round_trips(name: str) -> None:
    cfg = load_config(str(CONFIG_DIR / name))

    assert config_from_dict(cfg.to_dict()) == cfg


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")

    cfg = load_config(str(path))

    assert cfg == PipelineConfig()
    assert cfg.targets.split == "leave_one_out"
    assert cfg.input.format == "parquet"


def test_every_shipped_config_loads() -> None:
    paths = sorted(CONFIG_DIR.glob("*.yaml"))

    assert len(paths) >= 4
    for path in paths:
        cfg = load_config(str(path))
        for value in (cfg.input.ts_min, cfg.input.ts_max):
            assert type(value) is int, path
        assert config_from_dict(cfg.to_dict()) == cfg, path


def test_null_section_gives_its_defaults() -> None:
    cfg = config_from_dict({"shards": None, "targets": LOO})

    assert cfg.shards == PipelineConfig().shards


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-12-01", EPOCH_2024_12_01),
        (" 2024-12-01 ", EPOCH_2024_12_01),
        ("2024-12-01T12:00:00", EPOCH_2024_12_01 + 12 * 3600),
        ("2024-12-01T00:00:00+01:00", EPOCH_2024_12_01 - 3600),
        ("1733011200", EPOCH_2024_12_01),
        (1733011200, EPOCH_2024_12_01),
        (1733011200.9, EPOCH_2024_12_01),
        (dt.date(2024, 12, 1), EPOCH_2024_12_01),
    ],
)
def test_parse_epoch_seconds(value: Any, expected: int) -> None:
    assert parse_epoch_seconds(value, "targets.valid_start") == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", True, None])
def test_parse_epoch_seconds_rejects_garbage_naming_key(value: Any) -> None:
    with pytest.raises(ValueError, match="targets.valid_start"):
        parse_epoch_seconds(value, "targets.valid_start")


def test_unquoted_yaml_dates_are_parsed(tmp_path: Path) -> None:
    path = tmp_path / "dates.yaml"
    path.write_text(
        "targets:\n  split: time\n  valid_start: 2024-12-01\n  test_start: 2024-12-16\n",
        encoding="utf-8",
    )

    cfg = load_config(str(path))

    assert (cfg.targets.valid_start, cfg.targets.test_start) == (
        EPOCH_2024_12_01,
        EPOCH_2024_12_16,
    )


@pytest.mark.parametrize(
    "value",
    ["2024-12-01", dt.date(2024, 12, 1), dt.datetime(2024, 12, 1), EPOCH_2024_12_01, "1733011200"],
)
def test_timestamps_accept_iso_dates_and_dates_and_become_ints(value: Any) -> None:
    targets = {"split": "time", "valid_start": value, "test_start": "2024-12-16"}

    cfg = config_from_dict({"targets": targets, "input": {"ts_min": value}})

    assert cfg.targets.valid_start == cfg.input.ts_min == EPOCH_2024_12_01
    assert type(cfg.targets.valid_start) is int and type(cfg.input.ts_min) is int
    assert cfg.to_dict()["targets"]["valid_start"] == EPOCH_2024_12_01


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"input": {"ts_min": "yesterday"}},
            r"^input\.ts_min: expected epoch seconds or an ISO date like '2024-11-01', "
            r"got 'yesterday'$",
        ),
        ({"input": {"ts_max": True}}, r"^input\.ts_max: expected epoch seconds .*got True$"),
        (
            {"targets": {"split": "time", "valid_start": "2024-12-01", "test_start": "soon"}},
            r"^targets\.test_start: expected epoch seconds or an ISO date .* or null, got 'soon'$",
        ),
    ],
)
def test_bad_timestamps_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict({"targets": LOO, **data})


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_top_level_key_names_it_and_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"targets": LOO, "shard": {"max_samples": 1}})

    with pytest.raises(ValueError, match=r"pipeline\.yaml.*'shard'.*top level"):
        load_config(str(path))


def test_unknown_nested_key_names_full_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"targets": {**LOO, "negatives_per_positiv": 2}})

    with pytest.raises(ValueError, match=r"'targets\.negatives_per_positiv'") as err:
        load_config(str(path))
    assert "negatives_per_positive" in str(err.value)  # lists the allowed keys


def test_unknown_keys_in_a_section_are_all_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"targets": LOO, "shards": {"max_sampels": 5, "max_byte": 1}})

    with pytest.raises(ValueError) as err:
        load_config(str(path))

    message = str(err.value)
    assert message.startswith(f"{path}: unknown config key(s) ")
    assert "['shards.max_byte', 'shards.max_sampels']; allowed under shards: [" in message
    assert "'max_samples'" in message and "\n" not in message


def test_unknown_event_field_in_columns() -> None:
    with pytest.raises(ValueError, match=r"input\.columns.*'userid'"):
        config_from_dict({"input": {"columns": {"userid": "uid"}}})


# --- wrong types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"shards": {"max_samples": "many"}}, r"shards\.max_samples: expected int"),
        ({"shards": {"max_samples": True}}, r"shards\.max_samples: expected int"),
        ({"targets": {**LOO, "seed": 1.5}}, r"targets\.seed: expected int"),
        ({"input": {"csv_header": "maybe"}}, r"input\.csv_header: expected bool, got 'maybe'"),
        ({"behaviors": {"known": "view"}}, r"behaviors\.known: expected a list"),
        ({"behaviors": {"known": ["view", ["x"]]}}, r"behaviors\.known\[1\]: expected str"),
        ({"spark": {"conf": ["a"]}}, r"spark\.conf: expected a mapping"),
        ({"validation": {"max_bad_fraction": "low"}}, r"validation\.max_bad_fraction"),
        ({"targets": 3}, r"targets: expected a mapping"),
        ({"targets": {"split": "random"}}, r"targets\.split: expected one of"),
        ({"targets": {**LOO, "max_targets_per_user": "all"}}, r"targets\.max_targets_per_user"),
        ({"shards": {"max_samples": None}}, r"shards\.max_samples: expected int, got None"),
        ({"input": {"format": 3}}, r"input\.format: expected str, got 3"),
    ],
)
def test_wrong_types_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"behaviors": {"known": ["view", 3]}}, "behaviors.known[1]: expected str, got 3"),
        ({"behaviors": {"known": ["3", 3]}}, "behaviors.known[1]: expected str, got 3"),
        (
            {"targets": {**LOO, "positive_behaviors": ["click", None]}},
            "targets.positive_behaviors[1]: expected str, got None",
        ),
        ({"input": {"columns": {"foo": 3}}}, "input.columns.foo: expected str or null, got 3"),
        (
            {"behaviors": {"mapping": {"pv": ["view"]}}},
            "behaviors.mapping.pv: expected str, got ['view']",
        ),
        (
            {"spark": {"conf": {"spark.sql.adaptive.enabled": True}}},
            "spark.conf.spark.sql.adaptive.enabled: expected str or int or float, got True",
        ),
        (
            {"input": {"columns": 3}},
            "input.columns: expected a mapping of str to (str or null), got 3",
        ),
    ],
)
def test_bad_list_items_and_mapping_values_name_their_key(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        config_from_dict({"targets": LOO, **data})

    assert str(err.value) == message


def test_mapping_keys_and_spark_conf_numbers_become_strings() -> None:
    cfg = config_from_dict(
        {
            "behaviors": {"known": ["view", "buy"], "mapping": {1: "view", 2: "buy"}},
            "targets": {**LOO, "positive_behaviors": ["buy"]},
            "spark": {"conf": {"spark.sql.shuffle.partitions": 8, "spark.driver.memory": "1g"}},
        }
    )

    assert cfg.behaviors.mapping == {"1": "view", "2": "buy"}
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "1g"}


def test_non_mapping_file_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, ["not", "a", "mapping"])

    with pytest.raises(ValueError, match="config: expected a mapping"):
        load_config(str(path))


def test_ints_are_accepted_for_floats() -> None:
    cfg = config_from_dict({"validation": {"max_bad_fraction": 0}, "targets": LOO})

    assert cfg.validation.max_bad_fraction == 0.0
    assert isinstance(cfg.validation.max_bad_fraction, float)


# --- consistency ------------------------------------------------------------------------------


def test_time_split_without_valid_start_raises(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"targets": {"split": "time", "test_start": "2024-12-16"}})

    with pytest.raises(ValueError, match=r"targets\.valid_start.*required"):
        load_config(str(path))


def test_valid_start_after_test_start_raises() -> None:
    targets = {"split": "time", "valid_start": "2024-12-16", "test_start": "2024-12-01"}

    with pytest.raises(ValueError, match=r"targets\.valid_start \(1734307200\)"):
        config_from_dict({"targets": targets})


def test_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(missing))


def test_positive_behavior_not_in_known_raises() -> None:
    data = {
        "behaviors": {"known": ["view", "buy"]},
        "targets": {**LOO, "positive_behaviors": ["buy", "click"]},
    }

    with pytest.raises(ValueError, match=r"targets\.positive_behaviors: \['click'\]"):
        config_from_dict(data)


def test_impression_behavior_must_be_known_and_not_positive() -> None:
    with pytest.raises(ValueError, match=r"targets\.impression_behavior: 'imp'"):
        config_from_dict({"targets": {**LOO, "impression_behavior": "imp"}})
    with pytest.raises(ValueError, match="cannot also be a positive behavior"):
        config_from_dict({"targets": {**LOO, "impression_behavior": "click"}})


def test_behavior_mapping_target_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"behaviors\.mapping.*'pv'"):
        config_from_dict({"behaviors": {"mapping": {"pv": "pageview"}}, "targets": LOO})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"shards": {"max_samples": 0}}, r"shards\.max_samples: expected >= 1, got 0"),
        ({"vocab": {"min_count": 0}}, r"vocab\.min_count"),
        ({"validation": {"max_bad_fraction": 1.5}}, r"validation\.max_bad_fraction"),
        ({"input": {"format": "xml"}}, r"input\.format.*'xml'"),
        ({"input": {"ts_min": "2030-01-01", "ts_max": "2020-01-01"}}, r"input\.ts_min"),
        ({"targets": {**LOO, "negatives_per_positive": -1}}, r"targets\.negatives_per_positive"),
        ({"targets": {**LOO, "negatives": "impressions"}}, r"targets\.impression_behavior"),
    ],
)
def test_out_of_range_values_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict({"targets": LOO, **data})


# --- lifeseq build --print-config -------------------------------------------------------------


def test_print_config_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CONFIG_DIR / "synthetic.yaml")

    code = build_lifelong.main(["--config", path, "--print-config"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = yaml.safe_load(captured.out)
    assert printed == load_config(path).to_dict()
    assert printed["targets"]["valid_start"] == EPOCH_2024_12_01
    assert printed["shards"]["compression"] == "none"  # defaults are printed too


def test_print_config_reports_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path, {"targets": {**LOO, "negatives": "many"}})

    code = build_lifelong.main(["--config", str(path), "--print-config"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.strip() == (
        f"error: {path}: targets.negatives: expected one of "
        "['auto', 'impressions', 'sampled', 'none'], got 'many'"
    )


@pytest.mark.parametrize(
    ("extra", "missing"),
    [(["--output", "out"], "--input"), (["--input", "in"], "--output"), ([], "--input, --output")],
)
def test_build_without_input_or_output_is_a_clean_error(
    extra: list[str], missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = build_lifelong.main(["--config", str(CONFIG_DIR / "synthetic.yaml"), *extra])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith(f"error: the following arguments are required: {missing} ")
    assert "Traceback" not in captured.err and captured.out == ""
