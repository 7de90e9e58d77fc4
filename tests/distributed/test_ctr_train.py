"""The lifelong CTR configs (`configs/ctr/base.yaml` + `configs/ctr/NAME.yaml`) through
`jobs/train.py` (LightningCLI): every model config fits and validates in one process (TorchRec
backend), and TWIN and SIM soft (extra GSU tables) train under `torchrun` with 2 ranks, learn,
and test at 1 rank.

Data: `write_out_dir` shards with 120-event histories (a user's positive target has category 2,
the negative category 3, so a few dozen steps separate them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifeseq.models.blocks.embeddings import torchrec_available
from tests.distributed.test_train_job import (
    COLD_ITEMS_OFF,
    REPO_ROOT,
    logged,
    metrics,
    torchrun,
    train_losses,
)
from tests.unit.test_dataset import write_out_dir

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]

CONFIG_DIR = REPO_ROOT / "configs" / "ctr"
#: Every model config of the family (each file but the base, which each is merged onto).
CONFIGS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base"))
#: Small-model overrides: the lifelong frame's config, and the long-term unit's (the keys its
#: config has: DIN-100 has no unit, full attention no top_k).
FRAME = {"short_term_len": 16}
LONG_TERM = {"top_k": 8, "chunk": 32}
SIZES = {"train": [12, 9, 14, 7, 10, 8, 11, 9], "valid": [10, 6], "test": [8]}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctr") / "out"
    write_out_dir(root, SIZES, history_len=120)
    return root


def _model_yaml(config: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())["model"]["init_args"][
        "model"
    ]


def is_lifelong(config: str) -> bool:
    """Whether the config keeps base.yaml's `LifelongCtr` frame (BST, DIEN, MIMN name their own
    model class and keep their own small defaults)."""
    return "class_path" not in _model_yaml(config)


def unit_keys(config: str) -> dict:
    """The config keys of the config's long-term unit (empty without one)."""
    unit = _model_yaml(config).get("init_args", {}).get("long_term")
    return unit["init_args"]["config"] if unit is not None else {}


def model_overrides(config: str) -> list[str]:
    """`FRAME` and the `LONG_TERM` keys the config's long-term unit has, as CLI overrides (none
    for a model other than the lifelong frame)."""
    if not is_lifelong(config):
        return []
    frame = "--model.init_args.model.init_args"
    args = [a for k, v in FRAME.items() for a in (f"{frame}.config.{k}", str(v))]
    args += [
        a for k, v in LONG_TERM.items() if k in unit_keys(config)
        for a in (f"{frame}.long_term.init_args.config.{k}", str(v))
    ]  # fmt: skip
    return args


def test_overrides_follow_each_configs_long_term_unit() -> None:
    frame = "--model.init_args.model.init_args"
    assert model_overrides("din") == [f"{frame}.config.short_term_len", "16"]
    assert model_overrides("full")[2:] == [f"{frame}.long_term.init_args.config.chunk", "32"]
    assert model_overrides("twin")[2:] == [
        f"{frame}.long_term.init_args.config.top_k", "8",
        f"{frame}.long_term.init_args.config.chunk", "32",
    ]  # fmt: skip
    assert model_overrides("sdim")[2:] == [f"{frame}.long_term.init_args.config.chunk", "32"]
    assert model_overrides("bst") == [] and not is_lifelong("mimn")


def _args(subcommand: str, config: str, out: Path, run: Path, *extra: str) -> list[str]:
    """Without `trainers.cold_items` (`COLD_ITEMS_OFF`: every validation item of this toy data
    is new to training, and the label lies in its category)."""
    return [
        str(REPO_ROOT / "jobs" / "train.py"), subcommand,
        "--config", str(CONFIG_DIR / "base.yaml"), "--config", str(CONFIG_DIR / f"{config}.yaml"),
        "--data.root", str(out), "--trainer.default_root_dir", str(run),
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--data.num_workers", "0", "--data.max_history", "64",
        *model_overrides(config), *COLD_ITEMS_OFF, *extra,
    ]  # fmt: skip


def fit(config: str, out: Path, run: Path, nproc: int, steps: int, every: int, users: int) -> None:
    """`jobs/train.py fit` of `config` under torchrun: `steps` steps, validating every `every`,
    `users` users per batch and rank."""
    args = _args(
        "fit", config, out, run, "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(every), "--data.batch_size", str(users),
    )  # fmt: skip
    torchrun(nproc, args, f"{config} {nproc}-rank fit")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_ctr_config_fits_and_validates_in_one_process(out: Path, config: str) -> None:
    run = out.parent / f"one_{config}"
    fit(config, out, run, nproc=1, steps=6, every=6, users=8)

    assert sorted(train_losses(run)) == list(range(1, 7))
    rows = metrics(run)
    gauc = [float(r["val/gauc"]) for r in rows if r.get("val/gauc")]
    users = [float(r["val/gauc_users"]) for r in rows if r.get("val/gauc_users")]
    assert len(gauc) == 1 and 0.0 <= gauc[0] <= 1.0
    assert users == [16.0]  # every valid user has one positive and one negative target
    if not is_lifelong(config):
        return
    tree = json.loads((run / "checkpoints" / "last.ckpt" / "checkpoint.json").read_text())["tree"]
    frame = tree["hyper_parameters"]["model"]["init_args"]
    assert frame["config"]["short_term_len"] == FRAME["short_term_len"]  # the overrides applied
    unit = frame["long_term"]
    assert (unit is None) == (config == "din")
    if unit is not None:
        assert {k: unit["init_args"]["config"].get(k) for k in LONG_TERM} == {
            k: v if k in unit_keys(config) else None for k, v in LONG_TERM.items()
        }


@pytest.mark.parametrize("config", ["twin", "sim_soft"])
def test_two_rank_torchrun_training_learns_and_tests_at_one_rank(out: Path, config: str) -> None:
    run = out.parent / f"two_{config}"
    fit(config, out, run, nproc=2, steps=40, every=10, users=4)
    losses = train_losses(run)
    assert len(losses) == 40
    assert np.mean([losses[s] for s in range(31, 41)]) < np.mean([losses[s] for s in range(1, 11)])
    aucs = [float(r["val/auc"]) for r in metrics(run) if r.get("val/auc")]
    assert len(aucs) == 4 and aucs[-1] > 0.9

    ckpt = run / "checkpoints" / "last.ckpt"
    torchrun(1, _args("test", config, out, run, "--ckpt_path", str(ckpt)), f"{config} test")
    assert logged(run, "test/auc") > 0.9
    assert logged(run, "test/gauc") > 0.9
    assert logged(run, "test/logloss") < 0.6
