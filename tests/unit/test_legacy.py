"""Runs of older lifeseq versions (`trainers.legacy`, `lifeseq migrate`): from before the model
zoo, and from before the `lifeseq.*` namespace.

`tests/fixtures/legacy_twin/` holds a TWIN checkpoint and its config written by the code
before the refactor (commit 32c1997), with the test metrics that code logged for it. Migrated,
today's code must test it to the same numbers; unmigrated, training refuses it with the command
that migrates it, and export migrates it on the fly.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lifeseq.jobs import migrate
from lifeseq.serving.export import export_checkpoint
from lifeseq.serving.scorer import CtrRequest, Scorer
from lifeseq.trainers.checkpoint import read_checkpoint_tree
from lifeseq.trainers.legacy import (
    CLASS_PATH_KEYS,
    checkpoint_names,
    legacy_parameter_name,
    migrate_config,
    migrate_hparams,
    migrate_model_config,
    namespaced,
    namespaced_tree,
    parameter_name,
)
from tests.conformance.test_zoo_configs import write_vocabs
from tests.golden.runs import CTR_VOCAB, write_data

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "legacy_twin"
OLD_CTR = "trainers.lifelong_module.LifelongCtrModule"
OLD_GENERATIVE = "trainers.generative_module.GenerativeModule"


@pytest.mark.unit
def test_old_lifelong_arch_maps_to_the_frame_and_its_unit() -> None:
    arch = {"long_term": "eta", "short_term_len": 16, "top_k": 8, "chunk": 32, "heads": 2,
            "head_dim": 4, "attention_out": 8, "din_hidden": [8], "tower_hidden": [16],
            "eta_bits": 32, "sim_soft_dim": 32, "aux_weight": 0.1}  # fmt: skip
    path, args = migrate_model_config(OLD_CTR, {"arch": arch, "seed": 3})
    assert path == "lifeseq.trainers.tasks.ctr.CtrModule" and args["seed"] == 3
    model = args["model"]
    assert model["class_path"] == "lifeseq.models.zoo.ctr.lifelong.LifelongCtr"
    assert model["init_args"]["config"] == {
        "short_term_len": 16, "din_hidden": [8], "tower_hidden": [16]
    }  # fmt: skip
    assert model["init_args"]["long_term"] == {
        "class_path": "lifeseq.models.zoo.long_term.eta.Eta",
        "init_args": {"config": {"top_k": 8, "chunk": 32, "bits": 32,
                                 "esu": {"heads": 2, "head_dim": 4, "out_dim": 8}}},
    }  # fmt: skip
    _, din = migrate_model_config(OLD_CTR, {"arch": {**arch, "long_term": "none"}})
    assert din["model"]["init_args"]["long_term"] is None


@pytest.mark.unit
def test_old_generative_arch_maps_to_the_encoder_and_its_input_features() -> None:
    arch = {"encoder": "sasrec", "blocks": 3, "heads": 2, "ffn_dim": 24, "dropout": 0.1,
            "input_dropout": 0.3, "length_bucket": 16, "stochastic_length_alpha": 1.6}  # fmt: skip
    path, args = migrate_model_config(OLD_GENERATIVE, {"arch": arch, "loss": {"temperature": 0.1}})
    assert path == "lifeseq.trainers.tasks.next_item.NextItemModule"
    assert args["encoder"] == {
        "class_path": "lifeseq.models.zoo.sequence.sasrec.SasRec",
        "init_args": {"config": {"blocks": 3, "heads": 2, "dropout": 0.1, "length_bucket": 16,
                                 "ffn_dim": 24}},
    }  # fmt: skip
    assert args["features"]["init_args"] == {"dropout": 0.3}
    assert args["stochastic_length_alpha"] == 1.6 and args["loss"] == {"temperature": 0.1}
    path, args = migrate_model_config("trainers.ctr_module.CtrModule", {"hidden": [16, 8]})
    assert args["model"] == {
        "class_path": "lifeseq.models.zoo.ctr.smoke.SmokeCtr", "init_args": {"config": {"hidden": [16, 8]}}
    }  # fmt: skip


@pytest.mark.unit
def test_parameter_names_move_under_the_dense_part_and_back() -> None:
    cases = {
        (OLD_CTR, "attention.key_proj.weight"): "dense.long_term.attention.key_proj.weight",
        (OLD_CTR, "search.hyperplanes"): "dense.long_term.search.hyperplanes",
        (OLD_CTR, "tower.0.weight"): "dense.tower.0.weight",
        (OLD_GENERATIVE, "position.weight"): "dense.features.position.weight",
        (OLD_GENERATIVE, "encoder.blocks.0.uvqk"): "dense.encoder.blocks.0.uvqk",
        (OLD_CTR, "embeddings.collections.d16.embeddings.item.weight"):
            "embeddings.collections.d16.embeddings.item.weight",
    }  # fmt: skip
    for (old_module, old), new in cases.items():
        assert parameter_name(old_module, old) == new
        assert legacy_parameter_name(old_module, new) == old
    today = {"_class_path": "lifeseq.trainers.tasks.ctr.CtrModule"}
    assert checkpoint_names(today, ["dense.tower.0.weight"]) == {
        "dense.tower.0.weight": "dense.tower.0.weight"
    }  # fmt: skip
    assert migrate_hparams(today) is today


@pytest.mark.unit
def test_migrating_a_current_config_or_a_bad_path_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="is today's .*nothing to do"):
        migrate_config(yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text()))
    assert migrate.main([str(tmp_path / "missing.yaml")]) == 1
    assert "no such config file or checkpoint directory" in capsys.readouterr().err
    assert migrate.main([str(FIXTURE / "last.ckpt")]) == 1
    assert "--out: required" in capsys.readouterr().err


def _before_the_namespace(tree: Any) -> Any:
    """`tree` with `lifeseq.` taken off every class path: what lifeseq wrote before its
    packages moved under the `lifeseq.*` namespace."""
    if isinstance(tree, dict):
        return {
            k: v.removeprefix("lifeseq.") if k in CLASS_PATH_KEYS and isinstance(v, str)
            else _before_the_namespace(v)
            for k, v in tree.items()
        }  # fmt: skip
    return [_before_the_namespace(v) for v in tree] if isinstance(tree, list) else tree


@pytest.mark.unit
def test_class_paths_from_before_the_namespace_are_namespaced() -> None:
    assert namespaced("models.zoo.long_term.twin.Twin") == "lifeseq.models.zoo.long_term.twin.Twin"
    assert namespaced("trainers.strategy.TorchRecStrategy") == (
        "lifeseq.trainers.strategy.TorchRecStrategy"
    )
    for unchanged in ("lifeseq.models.zoo.ctr.smoke.SmokeCtr", "torch.optim.Adam",
                      "lightning.pytorch.loggers.CSVLogger", "modelsx.A", "models",
                      "trainers.lifelong_module.LifelongCtrModule"):  # fmt: skip
        assert namespaced(unchanged) == unchanged
    today = yaml.safe_load((REPO_ROOT / "configs" / "ctr" / "base.yaml").read_text())
    old = _before_the_namespace(today)
    assert old != today and "lifeseq." not in json.dumps(old)
    assert namespaced_tree(old) == today == migrate_config(old)
    assert namespaced_tree(today) == today


@pytest.mark.unit
def test_training_refuses_an_old_namespace_config_or_flag_naming_the_fix(tmp_path: Path) -> None:
    from lifeseq.jobs.train import config_error

    base = REPO_ROOT / "configs" / "ctr" / "base.yaml"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(_before_the_namespace(yaml.safe_load(base.read_text()))))
    message = config_error(["fit", "--config", str(old)])
    assert message and f"lifeseq migrate {old} --out NEW.yaml" in message
    flag = config_error(["fit", "--config", str(base),
                         "--model.init_args.model", "models.zoo.ctr.smoke.SmokeCtr"])  # fmt: skip
    assert flag == (
        "error: --model.init_args.model models.zoo.ctr.smoke.SmokeCtr: lifeseq's class paths "
        "are under lifeseq.* now; pass lifeseq.models.zoo.ctr.smoke.SmokeCtr"
    )
    assert config_error(["fit", "--trainer.strategy=trainers.strategy.TorchRecStrategy"])
    assert config_error(["fit", "--config", str(base), "--data.root", "models.v2"]) is None


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's config and checkpoint migrated by `lifeseq migrate`, and its data."""
    root = tmp_path_factory.mktemp("legacy")
    assert migrate.main([str(FIXTURE / "config.yaml"), "--out", str(root / "config.yaml")]) == 0
    assert migrate.main([str(FIXTURE / "last.ckpt"), "--out", str(root / "last.ckpt")]) == 0
    write_vocabs(write_data("ctr", root), CTR_VOCAB)
    return root


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.integration
def test_a_migrated_checkpoint_tests_to_the_old_codes_numbers(migrated: Path) -> None:
    run = migrated / "run"
    proc = _train(
        "test", "--config", str(migrated / "config.yaml"), "--data.root", str(migrated / "ctr"),
        "--ckpt_path", str(migrated / "last.ckpt"), "--trainer.default_root_dir", str(run),
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((FIXTURE / "test_metrics.json").read_text())
    (metrics,) = sorted((run / "logs" / "csv").glob("version_*/metrics.csv"))
    with metrics.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    got = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("test/")}
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.integration
def test_unmigrated_runs_are_refused_with_the_command_that_migrates_them(migrated: Path) -> None:
    old_config = _train("test", "--config", str(FIXTURE / "config.yaml"))
    assert old_config.returncode == 1
    assert "lifeseq migrate" in old_config.stderr and "before the model zoo" in old_config.stderr
    old_ckpt = _train(
        "test", "--config", str(migrated / "config.yaml"), "--data.root", str(migrated / "ctr"),
        "--ckpt_path", str(FIXTURE / "last.ckpt"),
        "--trainer.default_root_dir", str(migrated / "refused"),
    )  # fmt: skip
    assert old_ckpt.returncode == 1
    assert "lifeseq migrate" in old_ckpt.stderr and str(FIXTURE / "last.ckpt") in old_ckpt.stderr
    assert "Traceback" not in old_ckpt.stderr
    assert not (migrated / "refused").exists()


@pytest.mark.integration
def test_export_migrates_an_old_checkpoint_on_the_fly(migrated: Path) -> None:
    """Exports of a pre-zoo checkpoint and of one from before the lifeseq namespace (the
    migrated one with `lifeseq.` taken off its class paths) equal the migrated one's."""
    data = str(migrated / "ctr")
    before_namespace = migrated / "before_namespace.ckpt"
    shutil.copytree(migrated / "last.ckpt", before_namespace)
    saved = json.loads((before_namespace / "checkpoint.json").read_text())
    saved["tree"]["hyper_parameters"] = _before_the_namespace(saved["tree"]["hyper_parameters"])
    assert saved["tree"]["hyper_parameters"]["_class_path"] == "trainers.tasks.ctr.CtrModule"
    (before_namespace / "checkpoint.json").write_text(json.dumps(saved))
    tree, _ = read_checkpoint_tree(before_namespace)
    assert tree["hyper_parameters"]["_class_path"] == "lifeseq.trainers.tasks.ctr.CtrModule"
    old = export_checkpoint(FIXTURE / "last.ckpt", migrated / "export_old", data, compiled=False)
    new = export_checkpoint(migrated / "last.ckpt", migrated / "export_new", data, compiled=False)
    export_checkpoint(before_namespace, migrated / "export_ns", data, compiled=False)
    assert old["model"]["task"] == new["model"]["task"] == "lifeseq.trainers.tasks.ctr.CtrModule"
    assert old["model"]["name"] == "Twin"
    same = [f for f in old["files"] if f.startswith(("tables/", "cache/"))]
    assert same and all(old["files"][f] == new["files"][f] for f in same)
    request = CtrRequest(
        ["i5", "i9", "i33"], ["b2", "b3", "b2"], [100, 200, 300], ["i7", "i40"], 400
    )
    exports = ("export_old", "export_new", "export_ns")
    scores = [Scorer.load(migrated / e).score(request).logits.tolist() for e in exports]
    assert scores[0] == scores[1] == scores[2]


@pytest.mark.unit
def test_a_per_model_config_without_its_base_says_to_pass_the_base_first() -> None:
    from lifeseq.jobs.train import config_error

    twin = str(REPO_ROOT / "configs" / "ctr" / "twin.yaml")
    base = str(REPO_ROOT / "configs" / "ctr" / "base.yaml")
    message = config_error(["fit", "--config", twin, "--data.root", "OUT"])
    assert message and f"--config {base} --config {twin}" in message
    assert config_error(["fit", "--config", base, "--config", twin]) is None
    assert config_error(["fit", "--config", str(REPO_ROOT / "configs" / "smoke.yaml")]) is None
    old = config_error(["test", "--config", str(FIXTURE / "config.yaml")])
    assert old and "lifeseq migrate" in old
    ckpt = config_error(["test", "--config", base, "--ckpt_path", str(FIXTURE / "last.ckpt")])
    assert ckpt and "lifeseq migrate" in ckpt and "NEW.ckpt" in ckpt
