"""The sequential configs (`configs/sequential/base.yaml` + `configs/sequential/{hstu,sasrec,
cloze}.yaml`) through `jobs/train.py` (LightningCLI):

* each config fits and validates in one process (torch backend, as in the YAML): next-item
  HSTU and SASRec, and the masked-item (cloze) task with a bidirectional SASRec;
* HSTU with the TorchRec backend (row-wise sharded item table) trains at 2 ranks, learns a
  planted rule, and tests at 1 rank from the 2-rank checkpoint; validating that checkpoint
  must reproduce the 2-rank run's last validation (so every rank held the same dense weights:
  this caught TorchRec's static-graph DDP never averaging dense gradients of dataclass outputs);
* the CLI refuses a misspelt encoder class path, listing the valid ones, and an unknown encoder
  config key, naming it.

Data: `write_out_dir` shards of chains that follow a planted next-item rule `next = RULE[item]`
(one cycle through the catalog's items 2..99, so a chain never repeats an item and full
ranking, which excludes the history, never excludes the target); each user's positive target
is the chain's next item. Every transition occurs >= 7 times per training epoch.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifeseq.models.blocks.embeddings import torchrec_available
from tests.conformance import planted
from tests.distributed.test_train_job import (
    REPO_ROOT,
    ckpt_step,
    logged,
    metrics,
    torchrun,
    train_losses,
)
from tests.unit.test_dataset import write_out_dir

pytestmark = [pytest.mark.distributed]
needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable")

ITEMS, RULE = planted.ITEMS, planted.RULE  # items 2..99 in one successor cycle
VOCAB = {"item": ITEMS, "category": 6, "behavior": 5}
RANKING = ("val/hr@10", "val/ndcg@10", "val/hr@50", "val/ndcg@50", "val/mrr")
SIZES = {"train": [12, 9, 14, 7, 10, 8, 11, 9], "valid": [20, 12], "test": [24]}
TORCHREC = ("--model.init_args.embedding.backend", "torchrec")
CONFIG_DIR = REPO_ROOT / "configs" / "sequential"
ENCODER = "--model.init_args.encoder.init_args.config"
#: Small encoders: the encoder config overrides of each model config.
ARCH = {
    "hstu": [f"{ENCODER}.attention_dim", "8", f"{ENCODER}.linear_dim", "8"],
    "sasrec": [f"{ENCODER}.ffn_dim", "16"],
    "cloze": [f"{ENCODER}.ffn_dim", "16"],
}


#: User `user`: a chain of the rule, 12..20 history events 1000 s apart, its next item the one
#: positive target.
rule_sample = functools.partial(planted.rule_sample, events=(12, 21), gap_s=1_000)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generative") / "out"
    write_out_dir(root, SIZES, sample_fn=rule_sample, vocab=VOCAB)
    return root


def _args(subcommand: str, config: str, out: Path, run: Path, *extra: str) -> list[str]:
    return [
        str(REPO_ROOT / "jobs" / "train.py"), subcommand,
        "--config", str(CONFIG_DIR / "base.yaml"), "--config", str(CONFIG_DIR / f"{config}.yaml"),
        "--data.root", str(out), "--trainer.default_root_dir", str(run),
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--data.num_workers", "0", "--data.max_len", "32", "--data.embedding_dim", "16",
        "--data.eval_batch_size", "16", *ARCH[config],
        "--model.init_args.loss.uniform_negatives", "16", *extra,
    ]  # fmt: skip


def fit(config: str, out: Path, run: Path, nproc: int, steps: int, every: int, *extra: str) -> None:
    """`jobs/train.py fit` of `config` under torchrun: `steps` steps, validating every `every`
    (counted in steps over epochs)."""
    args = _args(
        "fit", config, out, run, "--trainer.max_epochs", "null",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(every), *extra,
    )  # fmt: skip
    torchrun(nproc, args, f"{config} {nproc}-rank fit")


def val_series(run: Path, key: str, version: int = 0) -> list[float]:
    """Every value of `key` the CSV logger recorded in run `version` (default: the first, fit)."""
    return [float(r[key]) for r in metrics(run, version) if r.get(key)]


@pytest.mark.parametrize("config", ["hstu", "sasrec", "cloze"])
def test_every_sequential_config_fits_and_validates_in_one_process(out: Path, config: str) -> None:
    run = out.parent / f"one_{config}"
    fit(config, out, run, 1, 30, 15, "--data.batch_size", "8")

    assert sorted(train_losses(run)) == list(range(1, 31))
    for key in RANKING:
        values = val_series(run, key)
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), (key, values)
    assert val_series(run, "val/targets") == [32.0, 32.0]  # one positive per valid user
    assert all(v > 0 for v in val_series(run, "val/loss"))
    for hr10, hr50 in zip(val_series(run, "val/hr@10"), val_series(run, "val/hr@50"), strict=True):
        assert hr50 >= hr10
    for name in ("best.ckpt", "last.ckpt"):
        assert (run / "checkpoints" / name / "checkpoint.json").is_file(), name
    tree = json.loads((run / "checkpoints" / "last.ckpt" / "checkpoint.json").read_text())["tree"]
    hparams = tree["hyper_parameters"]
    task = "masked_item.MaskedItemModule" if config == "cloze" else "next_item.NextItemModule"
    assert hparams["_class_path"] == f"lifeseq.trainers.tasks.{task}"
    encoder = hparams["encoder"]["init_args"]["config"]
    overrides = dict(zip(ARCH[config][::2], ARCH[config][1::2], strict=True))
    for flag, value in overrides.items():  # the overrides reached the encoder
        assert encoder[flag.rsplit(".", 1)[1]] == int(value), (flag, encoder)


@pytest.fixture(scope="module")
def two_rank(out: Path) -> Path:
    """HSTU, TorchRec backend, 2 ranks x 4 users, 80 steps validating every 5. Row-wise sharded
    item table (fused row-wise Adagrad, lr 0.05 from the YAML), dense AdamW at lr 0.01, no
    dropout: hr@10 reaches ~1.0 by step 80 (an untrained model: ~0.12, 10 of ~83 candidate
    items); ~15-20 s."""
    run = out.parent / "two_hstu_torchrec"
    fit(
        "hstu", out, run, 2, 80, 5, "--data.batch_size", "4", *TORCHREC,
        f"{ENCODER}.dropout", "0.0", "--model.init_args.features.init_args.dropout", "0.0",
        "--model.init_args.optimizer.lr", "0.01",
    )  # fmt: skip
    return run


@needs_torchrec
def test_two_rank_torchrec_training_learns_the_rule_and_tests_at_one_rank(
    out: Path, two_rank: Path
) -> None:
    losses = train_losses(two_rank, version=0)
    assert sorted(losses) == list(range(1, 81))
    first, last = (np.mean([losses[s] for s in steps]) for steps in (range(1, 11), range(71, 81)))
    assert last < 0.25 * first, (first, last)
    hr10, mrr = val_series(two_rank, "val/hr@10"), val_series(two_rank, "val/mrr")
    # chance: HR@10 ~ 10 / 83 candidates ~ 0.12, MRR ~ 0.06
    assert len(hr10) == 16 and hr10[-1] > 0.9 and hr10[-1] >= max(hr10[:3]), hr10
    assert mrr[-1] > 0.7, mrr
    assert val_series(two_rank, "val/targets") == [32.0] * 16
    ckpt = two_rank / "checkpoints" / "last.ckpt"
    assert ckpt_step(ckpt) == 80

    args = _args("test", "hstu", out, two_rank, *TORCHREC, "--ckpt_path", str(ckpt))
    torchrun(1, args, "hstu 1-rank test")
    assert logged(two_rank, "test/targets") == 24.0  # one positive per test user
    assert logged(two_rank, "test/hr@10") > 0.9
    assert logged(two_rank, "test/mrr") > 0.7


@needs_torchrec
def test_two_rank_torchrec_checkpoint_validates_like_the_run_that_wrote_it(
    out: Path, two_rank: Path
) -> None:
    """Golden test: every rank holds the same model, so validating the 2-rank `last.ckpt` (at 1
    rank) gives the numbers the 2-rank run logged at the same step. It failed while TorchRec's
    static-graph DDP left dense gradients of dataclass outputs un-averaged (ranks diverged)."""
    at_two = {key: val_series(two_rank, key)[-1] for key in RANKING}
    ckpt = two_rank / "checkpoints" / "last.ckpt"
    args = _args("validate", "hstu", out, two_rank, *TORCHREC, "--ckpt_path", str(ckpt))
    torchrun(1, args, "hstu 1-rank validate")
    assert {key: logged(two_rank, key) for key in RANKING} == pytest.approx(at_two, abs=1e-5)


@pytest.mark.parametrize(
    ("flag", "value", "messages"),
    [
        (
            "encoder.class_path", "lifeseq.models.zoo.sequence.hstu.HSTU",
            ["Valid SequenceEncoder class paths: ", "lifeseq.models.zoo.sequence.hstu.Hstu",
             "lifeseq.models.zoo.sequence.sasrec.SasRec"],
        ),
        ("encoder.init_args.config.blockz", "3",
         ["--model.init_args.encoder.init_args.config.blockz: lifeseq.models.zoo.sequence.hstu.Hstu has "
          "no such key"]),
    ],
    ids=["bad_class_path", "unknown_key"],
)  # fmt: skip
def test_cli_rejects_a_bad_encoder_naming_the_choices_or_key(
    out: Path, tmp_path: Path, flag: str, value: str, messages: list[str]
) -> None:
    args = _args("fit", "hstu", out, tmp_path / "run", f"--model.init_args.{flag}", value)
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    for message in messages:
        assert message in proc.stderr, (message, proc.stderr[-3000:])
    assert not (tmp_path / "run").exists()  # refused before training wrote anything
