"""Pure parts of the sequence-zoo benchmark (`jobs.bench_zoo`) and its `QualityClock`: flags,
commands, time to quality, mean ± sd, rows, table, stored variants; nothing trains."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lifeseq.jobs import bench_zoo
from lifeseq.trainers.quality_clock import preserved_rng

pytestmark = pytest.mark.unit


def _args(*argv: str) -> Any:
    return bench_zoo.parser().parse_args(list(argv))


def _point(seconds: float, test_ndcg: float) -> dict[str, Any]:
    return {"fit_seconds": seconds, "test_seconds": 0.5, "val": {}, "test": {"ndcg@10": test_ndcg}}


def _metrics(ndcg: float) -> dict[str, float]:
    return {"hr@10": 2 * ndcg, "ndcg@10": ndcg, "hr@50": 4 * ndcg, "ndcg@50": 1.5 * ndcg,
            "mrr": 0.9 * ndcg}  # fmt: skip


def _run(model: str, seed: int, ndcg: float, tag: str | None = None, **extra: Any) -> dict:
    spec = {"dataset": "ml-100k", "model": model, "seed": seed, "tag": tag, "overrides": [],
            "max_len": 50}  # fmt: skip
    return {
        "spec": spec,
        "fit_seconds": 100.0 + seed,
        "best_val_step": 10 * (seed + 1),
        "clock": [_point(10.0 * (seed + 1), ndcg / 2), _point(20.0 * (seed + 1), ndcg)],
        "recbole": _metrics(ndcg),
        "history_excluded": _metrics(ndcg * 1.5),
        **extra,
    }


# --- flags ------------------------------------------------------------------------------------


def test_parse_seeds() -> None:
    assert bench_zoo.parse_seeds("0,1,2") == [0, 1, 2]
    assert bench_zoo.parse_seeds(" 7 ") == [7]
    for bad in ("", "0,x", "-1", "1,1"):
        with pytest.raises(ValueError, match="--seeds"):
            bench_zoo.parse_seeds(bad)


def test_parse_overrides_refuses_malformed_and_owned_keys() -> None:
    assert bench_zoo.parse_overrides(
        ["model.init_args.loss.full_softmax=true", "--data.batch_size=64", "a.b=x=y"]
    ) == [("model.init_args.loss.full_softmax", "true"), ("data.batch_size", "64"), ("a.b", "x=y")]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_zoo.parse_overrides(["model.init_args.loss.full_softmax"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_zoo.parse_overrides(["=3"])
    with pytest.raises(ValueError, match="data.max_len is set by --max-len"):
        bench_zoo.parse_overrides(["data.max_len=200"])
    with pytest.raises(ValueError, match="set by the benchmark"):
        bench_zoo.parse_overrides(["model.init_args.eval.include_history=false"])
    with pytest.raises(ValueError, match="--seeds"):
        bench_zoo.parse_overrides(["model.init_args.seed=3"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--models", "sasrec,nope"), "--models: expected names from"),
        (("--models", ","), "--models"),
        (("--seeds", "a"), "--seeds"),
        (("--epochs", "0"), "--epochs: expected >= 1, got 0"),
        (("--patience", "0"), "--patience"),
        (("--max-len", "0"), "--max-len"),
        (("--val-every", "0"), "--val-every"),
        (("--reference-ndcg", "0"), "--reference-ndcg"),
        (("--reference-ndcg", "1.5"), "--reference-ndcg"),
        (("--override", "model.init_args.loss.full_softmax=true"), "--override needs --tag"),
        (("--tag", "a b"), "--tag"),
        (("--tag=-x",), "--tag"),
        (("--ml1m", "/nonexistent/ratings.dat"), "--ml1m: /nonexistent/ratings.dat"),
        (("--inter", "/nonexistent/x.inter"), "--inter: /nonexistent/x.inter"),
    ],
)
def test_check_args_names_the_bad_flag(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench_zoo.check_args(_args("--models", "sasrec", *argv))


def test_check_args_accepts_the_defaults_and_a_tagged_variant(tmp_path: Path) -> None:
    bench_zoo.check_args(_args())
    inter = tmp_path / "beauty.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    bench_zoo.check_args(
        _args("--tag", "bce", "--override", "model.init_args.loss.kind=bce", "--inter", str(inter))
    )
    with pytest.raises(ValueError, match="--inter"):
        bench_zoo.check_args(_args("--inter", str(tmp_path)))


def test_main_exits_1_on_a_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_zoo.main(["--models", "nope"]) == 1
    assert "error: --models" in capsys.readouterr().err


def test_cli_dispatches_bench_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    from lifeseq.jobs import cli

    assert cli.main(["bench", "zoo", "--epochs", "0"]) == 1
    assert "error: --epochs" in capsys.readouterr().err


# --- commands ---------------------------------------------------------------------------------


def test_the_config_hash_ignores_comments_and_layout_but_not_values(tmp_path: Path) -> None:
    base, model = tmp_path / "base.yaml", tmp_path / "model.yaml"
    base.write_text("model:\n  init_args: {seed: 0}\n")
    model.write_text("data: {max_len: 50}\n")
    first = bench_zoo.config_sha256(base, model)
    base.write_text("# a note\nmodel:\n  init_args:\n    seed: 0   # the seed\n")
    assert bench_zoo.config_sha256(base, model) == first
    model.write_text("data: {max_len: 51}\n")
    assert bench_zoo.config_sha256(base, model) != first
    assert bench_zoo.config_sha256(model, base) != bench_zoo.config_sha256(base, model)


def test_run_commands_train_under_the_recbole_protocol_and_test_both(tmp_path: Path) -> None:
    settings = {"tag": "fs", "overrides": [("model.init_args.loss.full_softmax", "true")],
                "max_len": 50, "epochs": 3, "val_every": 1, "patience": 4}  # fmt: skip
    spec = bench_zoo.run_spec({"dataset": "ml-100k"}, "sasrec", 2, settings)
    assert spec["seed"] == 2 and spec["tag"] == "fs" and len(spec["config_sha256"]) == 64
    fit, test = bench_zoo.run_commands(spec, tmp_path / "build", tmp_path / "run")
    text = " ".join(fit)
    assert " fit " in text and "--trainer.max_epochs 3" in text
    assert "--data.max_len 50 --model.init_args.eval.include_history true" in text
    assert "--trainer.check_val_every_n_epoch 1" in text
    assert "--seed_everything 2 --model.init_args.seed 2 --data.seed 2" in text
    assert "--model.init_args.loss.full_softmax=true" in fit
    assert "--model.init_args.loss.full_softmax=true" in test
    clock = fit.index("--trainer.callbacks+=trainers.quality_clock.QualityClock")
    assert fit[clock + 1] == f"--trainer.callbacks.path={tmp_path / 'run' / 'quality_clock.json'}"
    assert "--trainer.callbacks.patience=4" in fit
    assert test[2] == "test" and test[-2:] == ["--data.max_len", "50"]
    assert bench_zoo.protocol_flags("recbole", Path("c")) == [
        "--model.init_args.eval.include_history", "true", "--ckpt_path", "c"
    ]  # fmt: skip
    assert bench_zoo.protocol_flags("history_excluded", Path("c"))[1] == "false"
    fit, _ = bench_zoo.run_commands({**spec, "patience": None}, tmp_path, tmp_path)
    assert not any("EarlyStopping" in a for a in fit)


# --- time to quality, mean ± sd, rows -----------------------------------------------------------


def test_time_to_quality_is_the_first_point_reaching_the_reference() -> None:
    points = [_point(10.0, 0.04), _point(20.0, 0.0589), _point(30.0, 0.05), _point(40.0, 0.07)]
    assert bench_zoo.time_to_quality(points, 0.0589) == 20.0
    assert bench_zoo.time_to_quality(points, 0.06) == 40.0
    assert bench_zoo.time_to_quality(points, 0.08) is None
    assert bench_zoo.time_to_quality([], 0.01) is None
    assert bench_zoo.time_to_quality([{"fit_seconds": 5.0, "test": {}}], 0.01) is None


def test_mean_sd() -> None:
    stats = bench_zoo.mean_sd([0.1, 0.2, 0.3])
    assert stats["mean"] == pytest.approx(0.2) and stats["sd"] == pytest.approx(0.1)
    assert stats["n"] == 3 and stats["values"] == [0.1, 0.2, 0.3]
    stats = bench_zoo.mean_sd([None, 4.0, None, 6.0])
    assert (stats["mean"], stats["sd"], stats["n"]) == (5.0, pytest.approx(2**0.5), 2)
    assert bench_zoo.mean_sd([3.0]) == {"mean": 3.0, "sd": None, "n": 1, "values": [3.0]}
    assert bench_zoo.mean_sd([None])["mean"] is None


def test_aggregate_over_seeds_leaves_failed_runs_out() -> None:
    runs = [_run("sasrec", 0, 0.06), _run("sasrec", 1, 0.08), {**_run("sasrec", 2, 0.0),
            "error": "fit exited 1"}]  # fmt: skip
    row = bench_zoo.aggregate(runs, 0.0589, 50, "ml-100k")
    assert row["seeds"] == [0, 1] and row["failed_seeds"] == [2]
    assert row["recbole"]["ndcg@10"]["mean"] == pytest.approx(0.07)
    assert row["recbole"]["ndcg@10"]["sd"] == pytest.approx(0.02**0.5 / 10)
    assert row["history_excluded"]["ndcg@10"]["mean"] == pytest.approx(0.105)
    assert row["recbole"]["hr@10"]["values"] == [0.12, 0.16]
    assert row["fit_seconds"]["mean"] == 100.5
    # seed 0 reaches 0.0589 at its second point (20 s), seed 1 at its second (40 s)
    assert row["time_to_quality_s"]["values"] == [20.0, 40.0]
    assert bench_zoo.aggregate(runs, 0.075, 50, "ml-100k")["time_to_quality_s"]["values"] == [
        None, 40.0
    ]  # fmt: skip
    assert row["reference"] == {"name": "SASRec-50", "ndcg@10": 0.0589}
    assert bench_zoo.aggregate(runs, 0.0589, 200, "ml-100k")["reference"]["ndcg@10"] == 0.0613
    assert bench_zoo.aggregate(runs, 0.0589, 100, "ml-100k")["reference"] is None
    assert bench_zoo.aggregate(runs, 0.0589, 50, "ml-1m")["reference"] is None


def test_references() -> None:
    assert bench_zoo.reference_for("gru4rec", 50) == ("GRU4Rec", 0.0557)
    assert bench_zoo.reference_for("cloze", 50) == ("BERT4Rec", 0.0598)
    assert bench_zoo.reference_for("hstu", 50) is None
    assert bench_zoo.DEFAULT_REFERENCE == 0.0589
    assert bench_zoo.row_name("sasrec", None) == "sasrec"
    assert bench_zoo.row_name("sasrec", "bce") == "sasrec+bce"


def test_markdown_table() -> None:
    rows = {
        "sasrec": bench_zoo.aggregate(
            [_run("sasrec", 0, 0.06), _run("sasrec", 1, 0.08)], 0.0589, 50, "ml-100k"
        ),
        "hstu+bce": bench_zoo.aggregate(
            [_run("hstu", 0, 0.05, "bce"), {**_run("hstu", 1, 0.0, "bce"), "error": "x"}],
            0.0589, 50, "ml-100k",
        ),
    }  # fmt: skip
    payload = {
        "datasets": {"ml-100k": {"rows": rows}},
        "settings": {"max_len": 50, "reference_ndcg": 0.0589},
    }
    text = bench_zoo.markdown(payload)
    assert "| model | seeds | HR@10 R | NDCG@10 R |" in text
    assert "| MRR X | fit s | s to NDCG@10 0.0589 R (runs) | RecBole NDCG@10 |" in text
    assert (
        "| sasrec | 2 | 0.1400 ± 0.0283 | 0.0700 ± 0.0141 | 0.2800 ± 0.0566 | 0.1050 ± 0.0212 "
        "| 0.0630 ± 0.0127 | 0.2100 ± 0.0424 | 0.1050 ± 0.0212 |"
    ) in text
    assert "| 100 ± 1 | 30 ± 14 (2/2) | 0.0589 (SASRec-50) |" in text
    assert "| hstu+bce | 1 (1 failed) | 0.1000 | 0.0500 |" in text
    assert "| – (0/1) | – |" in text
    assert "training speed" not in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = {"sasrec": bench_zoo.aggregate([_run("sasrec", 0, 0.06)], 0.0589, 50, "ml-100k")}
    path = bench_zoo.plot({"datasets": {"ml-100k": {"rows": rows}}}, tmp_path / "zoo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stored_variants_match_settings_but_not_tag(tmp_path: Path) -> None:
    settings = {"tag": None, "overrides": [], "max_len": 50, "epochs": 2, "val_every": 1,
                "patience": None}  # fmt: skip
    data = {"dataset": "ml-100k", "input_sha256": "a", "pipeline_sha256": "b"}
    like = bench_zoo.run_spec(data, "sasrec", 0, settings)

    def store(name: str, **changes: Any) -> None:
        spec = {**like, **changes}
        (tmp_path / name).write_text(json.dumps({"spec": spec, "recbole": {}}))

    store("sasrec-seed0.json")  # this invocation's own file
    store("sasrec+bce-seed0.json", tag="bce", overrides=[["model.init_args.loss.kind", "bce"]])
    store("sasrec+bce-seed1.json", tag="bce", seed=1)
    store("sasrec+e5-seed0.json", tag="e5", epochs=5)  # other settings
    store("sasrec+old-seed0.json", tag="old", config_sha256="0" * 64)  # config changed since
    store("hstu+bce-seed0.json", tag="bce", model="hstu")  # model not chosen
    (tmp_path / "broken.json").write_text("{")
    found = bench_zoo.stored_variants(tmp_path, ["sasrec"], [0], like, {"sasrec-seed0.json"})
    assert [(r["spec"]["tag"], r["spec"]["seed"]) for r in found] == [("bce", 0)]
    assert bench_zoo.stored_variants(tmp_path / "none", ["sasrec"], [0], like, set()) == []


def test_stored_only_tabulates_stored_runs_and_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ml-100k"
    (root / "results").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"input_sha256": "a", "config_sha256": "b"}))
    monkeypatch.setattr(bench_zoo, "build_dataset", lambda *a: root / "build")
    monkeypatch.setattr(bench_zoo, "dataset_summary", lambda build: {"users": 3})

    def no_training(*args: Any) -> dict:
        raise AssertionError("--stored-only trained a model")

    monkeypatch.setattr(bench_zoo, "train_and_test", no_training)
    args = _args("--workdir", str(tmp_path), "--epochs", "2", "--stored-only")
    settings = {"tag": None, "overrides": [], "max_len": 50, "epochs": 2, "val_every": 1,
                "patience": None}  # fmt: skip
    data = {"dataset": "ml-100k", "input_sha256": "a", "pipeline_sha256": "b"}
    stored = _run("sasrec", 0, 0.06)
    stored["spec"] = bench_zoo.run_spec(data, "sasrec", 0, settings)
    (root / "results" / "sasrec-seed0.json").write_text(json.dumps(stored))
    out = bench_zoo.run_dataset("ml-100k", tmp_path, "recbole_inter", args, settings,
                                ["sasrec", "hstu"], [0, 1])  # fmt: skip
    assert list(out["rows"]) == ["sasrec"]  # hstu has no stored run; sasrec only seed 0
    assert out["rows"]["sasrec"]["seeds"] == [0]
    assert out["rows"]["sasrec"]["recbole"]["ndcg@10"]["mean"] == pytest.approx(0.06)


# --- QualityClock ---------------------------------------------------------------------------


def test_preserved_rng_restores_every_generator() -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    with preserved_rng():
        torch.rand(100), np.random.rand(100), random.random()
    after = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0])
    assert np.array_equal(after[1], expected[1]) and after[2] == expected[2]


class _Trainer:
    """What `QualityClock` reads of a Trainer."""

    def __init__(self, root: Path) -> None:
        from lightning.pytorch.plugins.precision import Precision

        self.world_size = 1
        self.sanity_checking = False
        self.global_step = 8
        self.current_epoch = 0
        self.default_root_dir = str(root)
        self.callback_metrics = {"val/ndcg@10": torch.tensor(0.25), "train/loss": 1.0}
        self.precision_plugin = Precision()
        self.datamodule = self

    def test_dataloader(self) -> list[torch.Tensor]:
        return [torch.zeros(2)]


class _Module:
    """Evaluates by drawing random numbers (as the sampled-softmax loss does)."""

    device = torch.device("cpu")

    def evaluate(self, batches: Any) -> dict[str, float]:
        draws = [float(torch.rand(())) for _ in batches]
        return {"ndcg@10": 0.5, "draws": len(draws)}


def test_quality_clock_records_points_and_leaves_the_rng_alone(tmp_path: Path) -> None:
    from lifeseq.trainers.quality_clock import QualityClock

    trainer, module = _Trainer(tmp_path), _Module()
    clock = QualityClock()
    clock.on_fit_start(trainer, module)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    clock.on_validation_end(trainer, module)
    assert torch.equal(torch.rand(4), expected)
    trainer.global_step = 16
    clock.on_validation_end(trainer, module)
    trainer.sanity_checking = True
    clock.on_validation_end(trainer, module)  # the sanity check is no validation point
    points = json.loads((tmp_path / "quality_clock.json").read_text())
    assert [p["step"] for p in points] == [8, 16]
    assert points[0]["val"] == {"ndcg@10": 0.25}
    assert points[0]["test"] == {"ndcg@10": 0.5, "draws": 1}
    assert 0 <= points[0]["fit_seconds"] <= points[1]["fit_seconds"]
    trainer.world_size = 2
    with pytest.raises(ValueError, match="one process only"):
        clock.on_fit_start(trainer, module)
