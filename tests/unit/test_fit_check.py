"""A model asked for a task it cannot do fails at start-up naming the model, the task and what
fits (`trainers.fit_check`, `jobs.train`): a bidirectional encoder on the next-item task, a
causal one on the masked-item task, a CTR model on generative data (and a sequential task on CTR
data), a zoo class given where another interface goes, a model file on another family's base.
`lifeseq train` (run in-process through `jobs.train.main`) exits 1 with two lines, no
traceback, and writes nothing; the checks leave the global RNG and the module as they were.
A full softmax over a catalog above `loss.full_softmax_max_items` is refused the same way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.jobs import train
from lifeseq.jobs.run_config import load_run_config
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig
from lifeseq.pipeline.sample_codec import SCHEMA_VERSION, RecordLayout
from lifeseq.trainers.fit_check import catalog_error, fit_error, window_bytes, window_memory_error

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEQ, CTR = CONFIGS / "sequential", CONFIGS / "ctr"
CAUSAL = (
    "lifeseq.models.zoo.sequence.gru4rec.Gru4Rec", "lifeseq.models.zoo.sequence.hstu.Hstu",
    "lifeseq.models.zoo.sequence.nextitnet.NextItNet", "lifeseq.models.zoo.sequence.pop.Pop",
    "lifeseq.models.zoo.sequence.sasrec.SasRec",
)  # fmt: skip


def check(configs: list[Path], *overrides: str) -> str | None:
    """`fit_error` of the run `configs` + `overrides` describe (parsed as `lifeseq train`)."""
    run = load_run_config(configs, ["--data.root", "unused", *overrides])
    data = run.data
    config = FeatureConfig(
        embedding_dim=data["embedding_dim"], max_len=data["max_len"],
        max_history=data["max_history"], time_gap_buckets=data["time_gap_buckets"],
    )  # fmt: skip
    return fit_error(run.module, data["view"], config)


def test_a_bidirectional_encoder_on_the_next_item_task_names_both_and_what_fits() -> None:
    message = check(
        [SEQ / "base.yaml", SEQ / "bert4rec.yaml"],
        "--model.class_path", "lifeseq.trainers.tasks.next_item.NextItemModule",
    )  # fmt: skip
    assert message is not None
    first, second = message.split("\n")
    assert first == (
        "error: lifeseq.trainers.tasks.next_item.NextItemModule trains causal encoders, but "
        "lifeseq.models.zoo.sequence.bert4rec.Bert4Rec is bidirectional."
    )
    assert second.startswith(
        "What fits: this encoder under lifeseq.trainers.tasks.masked_item.MaskedItemModule, or a causal "
        "encoder here: "
    )
    listed = second.split("here: ")[1].split(", ")
    assert (
        set(CAUSAL) <= set(listed) and "lifeseq.models.zoo.sequence.bert4rec.Bert4Rec" not in listed
    )


def test_a_causal_encoder_on_the_masked_item_task_is_refused_naming_the_next_item_task() -> None:
    message = check(
        [SEQ / "base.yaml", SEQ / "gru4rec.yaml"],
        "--model.class_path", "lifeseq.trainers.tasks.masked_item.MaskedItemModule",
    )  # fmt: skip
    assert message is not None
    first, second = message.split("\n")
    assert first == (
        "error: lifeseq.trainers.tasks.masked_item.MaskedItemModule trains bidirectional encoders, but "
        "lifeseq.models.zoo.sequence.gru4rec.Gru4Rec is causal."
    )
    assert "this encoder under lifeseq.trainers.tasks.next_item.NextItemModule" in second
    listed = second.split("here: ")[1].split(", ")
    assert "lifeseq.models.zoo.sequence.bert4rec.Bert4Rec" in listed
    assert "lifeseq.models.zoo.sequence.sasrec.SasRec (config.causal: false)" in listed
    assert "lifeseq.models.zoo.sequence.gru4rec.Gru4Rec" not in listed


def test_a_ctr_model_on_generative_data_and_a_sequential_task_on_ctr_data() -> None:
    ctr = check([CTR / "base.yaml", CTR / "twin.yaml"], "--data.view", "generative")
    assert ctr == (
        "error: lifeseq.trainers.tasks.ctr.CtrModule (model lifeseq.models.zoo.ctr.lifelong.LifelongCtr, "
        "lifeseq.models.zoo.long_term.twin.Twin) trains on data.view 'ctr', but data.view is "
        "'generative'.\nWhat fits: --data.view ctr on a build for it (configs/ctr/ or "
        "configs/smoke.yaml); generative data trains the tasks of configs/sequential/"
    )
    sequential = check([SEQ / "base.yaml", SEQ / "nextitnet.yaml"], "--data.view", "ctr")
    assert sequential is not None and sequential.startswith(
        "error: lifeseq.trainers.tasks.next_item.NextItemModule (model "
        "lifeseq.models.zoo.sequence.nextitnet.NextItNet) trains on data.view 'generative', but "
        "data.view is 'ctr'.\n"
    )


def test_a_config_the_data_widths_break_is_refused_with_its_own_message() -> None:
    message = check(
        [SEQ / "base.yaml", SEQ / "bert4rec.yaml"],
        "--model.init_args.encoder.init_args.config.heads", "3",
    )  # fmt: skip
    assert message == (
        "error: Bert4RecConfig.heads: the width d = 50 is not divisible by heads = 3"
    )


@pytest.mark.parametrize(
    "configs",
    [
        ["sequential/base", "sequential/bert4rec"], ["sequential/base", "sequential/nextitnet"],
        ["sequential/base", "sequential/pop"], ["sequential/base", "sequential/cloze"],
        ["ctr/base", "ctr/twin"], ["smoke"],
    ],
    ids=lambda c: c[-1],
)  # fmt: skip
def test_fitting_runs_pass_and_leave_the_rng_and_the_module_as_they_were(
    configs: list[str],
) -> None:
    run = load_run_config([CONFIGS / f"{c}.yaml" for c in configs], ["--data.root", "unused"])
    data = run.data
    config = FeatureConfig(embedding_dim=data["embedding_dim"], max_len=data["max_len"])
    backend = run.module.embedding.backend
    state = torch.random.get_rng_state()
    assert fit_error(run.module, data["view"], config) is None
    assert torch.equal(torch.random.get_rng_state(), state)
    assert run.module.embedding.backend == backend and run.module.model is None


# --- through `lifeseq train` ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--config", SEQ / "base.yaml", "--config", SEQ / "bert4rec.yaml",
             "--model.class_path", "lifeseq.trainers.tasks.next_item.NextItemModule"],
            "error: lifeseq.trainers.tasks.next_item.NextItemModule trains causal encoders, but "
            "lifeseq.models.zoo.sequence.bert4rec.Bert4Rec is bidirectional.",
        ),
        (
            ["--config", CTR / "base.yaml", "--config", CTR / "twin.yaml",
             "--data.view", "generative"],
            "error: lifeseq.trainers.tasks.ctr.CtrModule (model lifeseq.models.zoo.ctr.lifelong.LifelongCtr, "
            "lifeseq.models.zoo.long_term.twin.Twin) trains on data.view 'ctr', but data.view is "
            "'generative'.",
        ),
        (
            ["--config", SEQ / "base.yaml", "--config", CTR / "twin.yaml"],
            f"error: {CTR / 'twin.yaml'} is a ctr model file, but {SEQ / 'base.yaml'} is the "
            "sequential base.",
        ),
        (
            ["--config", SEQ / "base.yaml", "--config", SEQ / "sasrec.yaml",
             "--model.init_args.encoder.class_path", "lifeseq.models.zoo.long_term.twin.Twin"],
            "error: lifeseq.models.zoo.long_term.twin.Twin is a LongTermUnit, given as the encoder of "
            "lifeseq.trainers.tasks.next_item.NextItemModule or "
            "lifeseq.trainers.tasks.masked_item.MaskedItemModule (a SequenceEncoder).",
        ),
        (
            ["--config", CTR / "base.yaml",
             "--model.init_args.model", '{"class_path": "lifeseq.models.zoo.sequence.sasrec.SasRec"}'],
            "error: lifeseq.models.zoo.sequence.sasrec.SasRec is a SequenceEncoder, given as the model of "
            "lifeseq.trainers.tasks.ctr.CtrModule (a CtrModel).",
        ),
    ],
    ids=["bidirectional_on_next_item", "ctr_on_generative", "family_mix", "unit_as_encoder",
         "encoder_as_ctr_model"],
)  # fmt: skip
def test_lifeseq_train_exits_1_with_two_lines_before_training(
    args: list[object],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["lifeseq train"])  # LightningCLI reads it beside args
    run = tmp_path / "run"
    argv = ["fit", *map(str, args), "--data.root", str(tmp_path / "data"),
            "--trainer.default_root_dir", str(run)]  # fmt: skip
    try:
        code = train.main(argv)
    except SystemExit as exit_:  # a refusal at parse time exits from inside LightningCLI
        code = exit_.code
    assert code == 1
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[-2] == expected, lines
    assert lines[-1].startswith("What fits: ") and "Traceback" not in "\n".join(lines)
    assert not run.exists()  # refused before training wrote anything


def test_a_full_softmax_over_a_catalog_above_its_limit_is_refused_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """base.yaml's full softmax over a 100,002-row item table (a build's manifest) exits 1
    naming both sizes and what to set; the same catalog trains with sampled negatives."""
    monkeypatch.setattr(sys, "argv", ["lifeseq train"])
    data = tmp_path / "data"
    data.mkdir()
    manifest = {
        "schema_version": SCHEMA_VERSION, "members": RecordLayout.widest().members(),
        "vocab": {"item": 100_002, "category": 3, "behavior": 3},
    }  # fmt: skip
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    argv = ["fit", "--config", str(SEQ / "base.yaml"), "--config", str(SEQ / "sasrec.yaml"),
            "--data.root", str(data), "--trainer.default_root_dir", str(run)]  # fmt: skip
    assert train.main(argv) == 1
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[-2] == (
        "error: loss.full_softmax: true scores all 100,002 item rows at every labelled "
        "position, more than loss.full_softmax_max_items (50,000)."
    )
    assert lines[-1].startswith("What fits: --model.init_args.loss.full_softmax false")
    assert not run.exists()
    schema = FeatureSchema.from_manifest(str(data), FeatureConfig())
    module = load_run_config(
        [SEQ / "base.yaml", SEQ / "sasrec.yaml"],
        ["--data.root", str(data), "--model.init_args.loss.full_softmax", "false"],
    ).module
    assert catalog_error(module, schema) is None


def test_the_full_softmax_limit_is_checked_where_the_model_is_built_too() -> None:
    """A library user who builds the task without `lifeseq train` gets the same refusal."""
    module = load_run_config(
        [SEQ / "base.yaml", SEQ / "sasrec.yaml"],
        ["--data.root", "unused", "--model.init_args.loss.full_softmax_max_items", "11"],
    ).module
    schema = FeatureSchema.from_vocab({"item": 11, "category": 3, "behavior": 3}, FeatureConfig())
    assert module.build_model(schema) is not None
    too_large = FeatureSchema.from_vocab(
        {"item": 12, "category": 3, "behavior": 3}, FeatureConfig()
    )
    with pytest.raises(ValueError, match=r"all 12 item rows .*loss.full_softmax_max_items \(11\)"):
        module.build_model(too_large)


@pytest.mark.parametrize("bad", [0, -5, True, 2.5])
def test_a_bad_full_softmax_limit_names_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match=r"loss.full_softmax_max_items: expected an int >= 1"):
        SoftmaxLossConfig(full_softmax=True, full_softmax_max_items=bad)  # type: ignore[arg-type]


def _ctr_build(tmp_path: Path, longest_user: int) -> Path:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    manifest = {
        "schema_version": SCHEMA_VERSION, "members": RecordLayout.widest().members(),
        "vocab": {"item": 1000, "category": 20, "behavior": 5}, "max_user_events": longest_user,
    }  # fmt: skip
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


@pytest.mark.parametrize(
    ("unit", "cls"),
    [("twin", "Twin"), ("sim_hard", "SimHard"), ("eta", "Eta"), ("sim_soft", "SimSoft")],
)
def test_a_long_term_unit_retrieving_more_than_a_window_holds_is_refused(
    unit: str, cls: str
) -> None:
    """`top_k` > `data.max_history`: the message names both numbers and the keys to change."""
    error = check([CTR / "base.yaml", CTR / f"{unit}.yaml"], "--data.max_history", "50")
    assert error == (
        f"error: {cls}: config.top_k is 64 but data.max_history is 50, so a target's window never "
        "holds 64 behaviors to retrieve. Set "
        "--model.init_args.model.init_args.long_term.init_args.config.top_k <= 50, or raise "
        "--data.max_history"
    )
    assert check([CTR / "base.yaml", CTR / f"{unit}.yaml"], "--data.max_history", "64") is None


def test_a_window_above_what_the_pipeline_keeps_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["lifeseq train"])
    data, run = _ctr_build(tmp_path, 5000), tmp_path / "run"
    argv = ["fit", "--config", str(CTR / "base.yaml"), "--config", str(CTR / "twin.yaml"),
            "--data.root", str(data), "--data.max_history", "1000000",
            "--trainer.default_root_dir", str(run)]  # fmt: skip
    assert train.main(argv) == 2  # a config value out of range: a usage error
    err = capsys.readouterr().err
    assert err.strip().split("\n")[-1] == (
        "error: FeatureConfig.max_history (data.max_history) is 1,000,000, above the 100,000 "
        "events the pipeline keeps per user (lifelong.max_history); set --data.max_history "
        "<= 100000"
    )
    assert "Traceback" not in err and not run.exists()


def test_windows_the_machine_cannot_hold_are_refused_with_the_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """10^5-event windows of 10^5-event users, 4,096 per batch: far beyond this machine's
    memory, refused before training with the estimate and what fits; a build whose longest user
    is short fits the same settings (a batch holds each user's history once)."""
    monkeypatch.setattr(sys, "argv", ["lifeseq train"])
    run = tmp_path / "run"

    def argv(data: Path) -> list[str]:
        return ["fit", "--config", str(CTR / "base.yaml"), "--config", str(CTR / "twin.yaml"),
                "--data.root", str(data), "--data.max_history", "100000",
                "--data.batch_size", "4096", "--trainer.default_root_dir", str(run)]  # fmt: skip

    assert train.main(argv(_ctr_build(tmp_path / "big", 100_000))) == 1
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[-2].startswith(
        "error: data.max_history 100,000 (this build's longest user: 100000) × data.batch_size "
        "4096 / eval_batch_size 32 needs ~317.4 GiB for one batch's history (embedding_dim 16)"
    )
    assert lines[-1].startswith("What fits: batch_size × max_history <= ")
    assert not run.exists()
    fits = window_memory_error(4096, 32, 100_000, 20, 16, 16 * 2**30)
    assert fits is None


def test_window_memory_estimate() -> None:
    """The estimate: users × min(max_history, longest user) × (48 D + 64) bytes in training,
    half that per event in evaluation; refused above half the available memory."""
    assert window_bytes(8, 1000, 16, train=True) == 8 * 1000 * 832
    assert window_bytes(8, 1000, 16, train=False) == 8 * 1000 * 416
    budget = 2 * window_bytes(8, 1000, 16, train=True)
    assert window_memory_error(8, 8, 1000, None, 16, budget) is None
    assert window_memory_error(9, 8, 1000, None, 16, budget) is not None
    assert window_memory_error(9, 8, 1000, 880, 16, budget) is None  # the longest user is shorter
    assert window_memory_error(8, 17, 1000, None, 16, budget) is not None  # eval batches too
    assert window_memory_error(10**6, 8, 1000, None, 16, None) is None  # unknown memory
