"""`lifeseq train` as a new user meets it, run as a subprocess (the `lifeseq` console script's
module, in an empty working directory): every mistake answers in at most three lines naming
the flag, key, file or path, exits 2 (the command line) or 1 (the data or checkpoint), prints
no traceback and writes nothing; `fit --help` / `test --help` show the subcommand's flags and
an example; `test` without a checkpoint is refused unless `--untrained true`; `fit` without an
output folder writes `runs/<config>/`, never into the working directory itself; every run ends
with one summary line (metrics and checkpoint).

Data: `tests.unit.test_dataset.write_out_dir` shards (the smoke model's planted rule). One
2-step fit (module fixture, ~15 s) makes the checkpoint the checkpoint cases load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_events_parquet
from tests.unit.test_dataset import write_out_dir

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
SMOKE = CONFIGS / "smoke.yaml"
TWIN = [
    "--config",
    str(CONFIGS / "ctr" / "base.yaml"),
    "--config",
    str(CONFIGS / "ctr" / "twin.yaml"),
]
#: At most this many lines answer a mistake.
MAX_LINES = 3


@dataclass
class Ran:
    """A finished `lifeseq` run: exit code, output lines, and what it left in its directory."""

    code: int
    stdout: str
    stderr: str
    written: list[str]

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]

    @property
    def last(self) -> str:
        """The last line the run printed on stdout (the summary line of a finished run)."""
        return self.stdout.strip().splitlines()[-1]


def lifeseq(cwd: Path, *args: str, timeout: int = 180) -> Ran:
    """Run `lifeseq ARGS` in `cwd` (created empty if missing); what it printed and wrote."""
    cwd.mkdir(parents=True, exist_ok=True)
    before = set(cwd.rglob("*"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lifeseq.jobs.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    written = sorted(str(p.relative_to(cwd)) for p in set(cwd.rglob("*")) - before)
    return Ran(proc.returncode, proc.stdout, proc.stderr, written)


def assert_refused(ran: Ran, code: int, *needles: str) -> str:
    """Exit `code`, at most `MAX_LINES` lines, no traceback, nothing written, the first line an
    `error:` holding every needle; returns the output."""
    text = "\n".join(ran.lines)
    assert ran.code == code, text
    assert len(ran.lines) <= MAX_LINES, text
    assert "Traceback" not in text
    assert ran.written == [], ran.written
    errors = [line for line in ran.lines if line.startswith("error: ")]
    assert errors, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-cli") / "build"
    write_out_dir(root, {"train": [8, 8], "valid": [4], "test": [4]})
    return root


@pytest.fixture(scope="module")
def trained(build: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ran]:
    """`fit` of the smoke model for 2 steps without an output folder: (its cwd, the run)."""
    cwd = tmp_path_factory.mktemp("fit-default-folder")
    ran = lifeseq(cwd, "train", "fit", "--config", str(SMOKE), "--data.root", str(build),
                  "--trainer.max_steps", "2")  # fmt: skip
    assert ran.code == 0, ran.stderr[-3000:]
    return cwd, ran


def test_fit_help_shows_the_subcommands_flags_and_an_example(tmp_path: Path) -> None:
    ran = lifeseq(tmp_path, "train", "fit", "--help")
    assert ran.code == 0, ran.stderr
    assert "--data.root ROOT" in ran.stdout and "--trainer.max_steps" in ran.stdout
    assert "--model.help" in ran.stdout  # how to list a task's --model.init_args.*
    assert "example:\n  lifeseq train fit --config configs/ctr/base.yaml" in ran.stdout
    assert "--model.help lifeseq.trainers.tasks.ctr.CtrModule" in ran.stdout
    assert ran.written == []


def test_test_help_shows_ckpt_path_untrained_and_its_example(tmp_path: Path) -> None:
    ran = lifeseq(tmp_path, "train", "test", "--help")
    assert ran.code == 0, ran.stderr
    assert "--ckpt_path CKPT_PATH" in ran.stdout and "--untrained {true,false}" in ran.stdout
    assert "example:\n  lifeseq train test" in ran.stdout
    assert "--ckpt_path runs/twin/checkpoints/last.ckpt" in ran.stdout


def test_a_missing_data_root_is_named_before_anything_is_written(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    ran = lifeseq(
        tmp_path / "cwd", "train", "fit", "--config", str(SMOKE), "--data.root", str(missing)
    )
    assert_refused(ran, 1, f"--data.root {missing}: no such directory", "lifeseq build")


def test_raw_events_as_data_root_say_to_build_them_first(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_events_parquet(events / "part-0.parquet", [{"user_id": "u", "item_id": "i", "ts": 1}])
    ran = lifeseq(
        tmp_path / "cwd", "train", "fit", "--config", str(SMOKE), "--data.root", str(events)
    )
    assert_refused(ran, 1, "raw event file(s) (part-0.parquet", f"--input {events} --output OUT")


def test_a_misspelt_key_names_the_flag_the_class_and_its_arguments(
    tmp_path: Path, build: Path
) -> None:
    ran = lifeseq(tmp_path, "train", "fit", *TWIN, "--data.root", str(build),
                  "--model.init_args.lossx", "1")  # fmt: skip
    assert_refused(
        ran, 2, "error: --model.init_args.lossx: lifeseq.trainers.tasks.ctr.CtrModule has no argument "
        "'lossx'", "its arguments: model, embedding, sharding, optimizer, seed",
        "`lifeseq train fit --help` lists every flag",
    )  # fmt: skip


def test_a_misspelt_nested_key_suggests_the_right_one(tmp_path: Path, build: Path) -> None:
    flag = "--model.init_args.model.init_args.long_term.init_args.config.topk"
    ran = lifeseq(tmp_path, "train", "fit", *TWIN, "--data.root", str(build), flag, "3")
    assert_refused(ran, 2, f"error: {flag}: lifeseq.models.zoo.long_term.twin.Twin has no such key",
                   "did you mean top_k?")  # fmt: skip


def test_a_misspelt_trainer_flag_suggests_the_right_one(tmp_path: Path, build: Path) -> None:
    ran = lifeseq(tmp_path, "train", "fit", "--config", str(SMOKE), "--data.root", str(build),
                  "--trainer.max_stepz", "3")  # fmt: skip
    assert_refused(ran, 2, "error: --trainer.max_stepz: no such flag; did you mean "
                           "--trainer.max_steps?")  # fmt: skip


def test_a_missing_config_file_is_named(tmp_path: Path, build: Path) -> None:
    ran = lifeseq(tmp_path, "train", "fit", "--config", str(tmp_path / "nope.yaml"),
                  "--data.root", str(build))  # fmt: skip
    assert_refused(ran, 2, f"error: --config {tmp_path / 'nope.yaml'}: no such config file")


def test_a_value_of_the_wrong_type_names_flag_and_value(tmp_path: Path, build: Path) -> None:
    ran = lifeseq(tmp_path, "train", "fit", "--config", str(SMOKE), "--data.root", str(build),
                  "--data.batch_size", "eight")  # fmt: skip
    assert_refused(ran, 2, "error: --data.batch_size: expected an integer, got 'eight'")


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path, build: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  class_path: x\n   bad: [1, 2\n")
    ran = lifeseq(tmp_path / "cwd", "train", "fit", "--config", str(broken),
                  "--data.root", str(build))  # fmt: skip
    assert_refused(ran, 2, f"error: --config {broken}: line 3, column 7: mapping values are not "
                           "allowed here (not valid YAML)")  # fmt: skip


def test_a_yaml_syntax_error_in_a_build_config_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "pipeline.yaml"
    broken.write_text("input:\n  format: parquet\n  ts_min: [2020\n")
    ran = lifeseq(tmp_path / "cwd", "build", "--config", str(broken), "--input", "x",
                  "--output", "y")  # fmt: skip
    assert_refused(ran, 2, f"error: {broken}: line 4, column 1:", "(not valid YAML)")


def test_test_without_a_checkpoint_is_refused_unless_asked(tmp_path: Path, build: Path) -> None:
    ran = lifeseq(
        tmp_path / "cwd", "train", "test", "--config", str(SMOKE), "--data.root", str(build)
    )
    assert_refused(ran, 2, "error: test needs --ckpt_path", "--untrained true")
    ran = lifeseq(tmp_path / "cwd", "train", "validate", "--config", str(SMOKE),
                  "--data.root", str(build))  # fmt: skip
    assert_refused(ran, 2, "error: validate needs --ckpt_path")
    ran = lifeseq(tmp_path / "cwd", "train", "predict", "--config", str(SMOKE),
                  "--data.root", str(build), "--ckpt_path", "x.ckpt")  # fmt: skip
    assert_refused(ran, 2, "error: predict: lifeseq's tasks define no prediction step")
    untrained = lifeseq(tmp_path / "asked", "train", "test", "--config", str(SMOKE),
                        "--data.root", str(build), "--untrained", "true")  # fmt: skip
    assert untrained.code == 0, untrained.stderr[-2000:]
    assert untrained.last.startswith("test; test/auc ")
    assert untrained.last.endswith("; checkpoint none (--untrained)")


def test_a_checkpoint_path_that_does_not_exist_is_named(tmp_path: Path, build: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    ran = lifeseq(tmp_path / "cwd", "train", "test", "--config", str(SMOKE), "--data.root",
                  str(build), "--ckpt_path", str(missing))  # fmt: skip
    assert_refused(ran, 1, f"error: --ckpt_path {missing}: no such checkpoint")


def test_fit_without_an_output_folder_writes_runs_config_name(trained: tuple[Path, Ran]) -> None:
    cwd, ran = trained
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]  # no checkpoints/ or logs/ in cwd
    assert (cwd / "runs" / "smoke" / "checkpoints" / "last.ckpt" / "checkpoint.json").is_file()
    assert (cwd / "runs" / "smoke" / "logs" / "csv").is_dir()
    index = (cwd / "runs" / "smoke" / "checkpoints" / "last.ckpt" / ".metadata.json").read_text()
    assert '"/lifeseq/trained_rows/item"' in index  # trainers.cold_items: saved with the model
    assert "run folder: runs/smoke (--trainer.default_root_dir sets another)" in ran.stderr
    last = ran.last
    assert last.startswith("fit: 2 steps; val/auc "), last  # one step an epoch: validated
    assert last.endswith(f"checkpoint {cwd / 'runs' / 'smoke' / 'checkpoints' / 'last.ckpt'}")


def test_test_of_a_checkpoint_logs_into_its_run_and_ends_with_a_summary(
    trained: tuple[Path, Ran], build: Path
) -> None:
    cwd, _ = trained
    ckpt = "runs/smoke/checkpoints/last.ckpt"
    ran = lifeseq(cwd, "train", "test", "--config", str(SMOKE), "--data.root", str(build),
                  "--ckpt_path", ckpt)  # fmt: skip
    assert ran.code == 0, ran.stderr[-2000:]
    last = ran.last
    assert last.startswith("test; test/auc ") and "test/gauc " in last and "test/loss " in last
    assert last.endswith(f"; checkpoint {ckpt}")
    assert all(w.startswith("runs/smoke/logs") for w in ran.written), ran.written


def test_a_checkpoint_of_another_model_names_both_models(
    trained: tuple[Path, Ran], build: Path, tmp_path: Path
) -> None:
    cwd, _ = trained
    ckpt = cwd / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    ran = lifeseq(tmp_path, "train", "test", *TWIN, "--data.root", str(build), "--ckpt_path",
                  str(ckpt))  # fmt: skip
    assert_refused(
        ran, 1, f"error: --ckpt_path {ckpt} does not fit this run: it holds SmokeCtr, this run "
        "builds LifelongCtr + Twin", "Settings that differ: --model.init_args.model.class_path",
    )  # fmt: skip


def test_a_checkpoint_of_another_size_names_the_parameter_and_both_shapes(
    trained: tuple[Path, Ran], build: Path, tmp_path: Path
) -> None:
    cwd, _ = trained
    ckpt = cwd / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    ran = lifeseq(tmp_path, "train", "test", "--config", str(SMOKE), "--data.root", str(build),
                  "--ckpt_path", str(ckpt), "--model.init_args.model.init_args.config.hidden",
                  "[64]")  # fmt: skip
    assert_refused(
        ran, 1, "does not fit this run: model.dense.mlp.0.weight is [32, 48] in the checkpoint, "
        "[64, 48] here", "--model.init_args.model.init_args.config.hidden [32] (here [64])",
    )  # fmt: skip
