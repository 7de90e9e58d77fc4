"""Config mistakes answer in one line: a YAML syntax error names the file, line and column
(`pipeline.yaml_files`) wherever a config is read (build, train, migrate, demo, benchmarks),
and jsonargparse's long reports about `lifeseq train` flags are condensed to the flag, what it
expected and what was given (`jobs.train_usage`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeseq.jobs import bench_ctr, bench_generative, bench_zoo, demo, migrate
from lifeseq.jobs.bench_report import configs_error
from lifeseq.jobs.train import config_files, default_run_folder
from lifeseq.jobs.train_usage import flags_in_help, usage_error
from lifeseq.pipeline.config import load_config
from lifeseq.pipeline.yaml_files import read_yaml, yaml_file_error

pytestmark = pytest.mark.unit

BROKEN = "model:\n  class_path: x\n   bad: [1, 2\n"


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(broken: Path) -> None:
    with pytest.raises(ValueError) as caught:
        read_yaml(broken)
    assert str(caught.value) == (
        f"{broken}: line 3, column 7: mapping values are not allowed here (not valid YAML); "
        "fix the file"
    )
    assert yaml_file_error(broken) == str(caught.value)
    assert yaml_file_error(broken.with_name("missing.yaml")) == (
        f"{broken.with_name('missing.yaml')}: no such config file"
    )
    (broken.parent / "ok.yaml").write_text("a: [1, 2]\n")
    assert (
        read_yaml(broken.parent / "ok.yaml") == {"a": [1, 2]}
        and yaml_file_error(broken.parent / "ok.yaml") is None
    )


def test_binary_content_is_refused_as_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ValueError, match=r"binary.yaml: not UTF-8 text \(byte 3\)"):
        read_yaml(path)


def test_the_pipeline_config_loader_reports_yaml_errors_in_one_line(broken: Path) -> None:
    with pytest.raises(ValueError, match=r"^.*broken.yaml: line 3, column 7: mapping values"):
        load_config(str(broken))


def test_migrate_and_demo_refuse_a_broken_config_in_one_line(
    broken: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert migrate.main([str(broken)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {broken}: line 3, column 7")
    assert demo.main(["--config", str(broken), "--workdir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {broken}: line 3, column 7")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("module", "constant", "argv"),
    [
        (bench_ctr, "BASE_CONFIG", ["--models", "din", "--workdir", "WORK"]),
        (bench_generative, "BASE_CONFIG", ["--models", "sasrec", "--out", "WORK/g.json"]),
        (bench_zoo, "BASE_CONFIG", ["--models", "sasrec", "--workdir", "WORK"]),
    ],
    ids=["ctr", "generative", "zoo"],
)
def test_benchmarks_check_their_configs_before_any_work(
    module: object,
    constant: str,
    argv: list[str],
    broken: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(module, constant, broken)
    work = tmp_path / "work"
    code = module.main([a.replace("WORK", str(work)) for a in argv])  # type: ignore[attr-defined]
    err = capsys.readouterr().err.strip()
    assert code in (1, 2), err
    assert f"{broken}: line 3, column 7: mapping values are not allowed here" in err
    assert err.count("\n") == 0
    assert not work.exists() or not any(work.iterdir())


def test_configs_error_names_the_first_bad_file(broken: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\n")
    assert configs_error([good]) is None
    assert configs_error([good, broken]) == f"error: {yaml_file_error(broken)}"


def test_config_files_of_a_command_line() -> None:
    argv = ["fit", "--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml", "--data.root", "x"]
    assert config_files(argv) == ["a.yaml", "b.yaml", "c.yaml"]
    assert config_files(["fit", "--config"]) == []


def test_the_default_run_folder() -> None:
    configs = [Path("configs/ctr/base.yaml"), Path("configs/ctr/twin.yaml")]
    assert default_run_folder("fit", configs, None, {}) == Path("runs/twin")
    assert default_run_folder(
        "fit", [], None, {"class_path": "lifeseq.trainers.tasks.ctr.CtrModule"}
    ) == (Path("runs/ctrmodule"))
    checkpoint = "somewhere/run7/checkpoints/last.ckpt"
    assert default_run_folder("test", configs, checkpoint, {}) == Path("somewhere/run7")
    assert default_run_folder("fit", configs, checkpoint, {}) == Path("runs/twin")
    assert default_run_folder("test", configs, "elsewhere.ckpt", {}) == Path("runs/twin")


UNION_TYPE_ERROR = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'NoneType'>, <class 'lifeseq.trainers.platform_module.PlatformModule'>]
  Errors:
    - Expected a <class 'NoneType'>
    - Problem with given class_path 'lifeseq.trainers.tasks.ctr.CtrModule':
        Parser key "optimizer":
          Does not validate against any of the Union subtypes
          Errors:
            - Expected a <class 'NoneType'>
            - Problem with given class_path 'lifeseq.trainers.platform_module.DenseOptimizerConfig':
                Parser key "lr":
                  Expected a <class 'float'>. Got value: abc
          Given value type: <class 'jsonargparse._util.NestedArg'>
          Given value: NestedArg(key='lr', val='abc')
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='optimizer.lr', val='abc')"""


@pytest.mark.parametrize(
    ("message", "argv", "expected"),
    [
        (UNION_TYPE_ERROR, ["fit", "--model.init_args.optimizer.lr", "abc"],
         "error: --model.init_args.optimizer.lr: expected a number, got 'abc'"),
        ('Parser key "data.batch_size":\n  Expected a <class \'int\'>. Got value: eight',
         ["fit", "--data.batch_size", "eight"],
         "error: --data.batch_size: expected an integer, got 'eight'"),
        ("Unrecognized arguments: --trainer.max_stepz 3", ["fit"],
         "error: --trainer.max_stepz: no such flag; did you mean --trainer.max_steps?"),
        ("Validation failed: Subcommand 'fit' does not accept nested key 'data.foo'", ["fit"],
         "error: data.foo: no such key (in a --config file); did you mean data.root?"),
        ('Parser key "config":\n  File does not exist: \'/x/nope.yaml\'', ["fit"],
         "error: --config /x/nope.yaml: no such file"),
        ('Validation failed: Key "fit.data.root" is required but not included in config '
         "object or its value is None.", ["fit"], "error: --data.root is required"),
        ("Parser key \"model\":\n  - Problem with given class_path 'lifeseq.models.zoo.x.Y':\n"
         "      module 'lifeseq.models.zoo' has no attribute 'x'", ["fit", "--model", "lifeseq.models.zoo.x.Y"],
         "error: --model lifeseq.models.zoo.x.Y: cannot import it (module 'lifeseq.models.zoo' has no "
         "attribute 'x')"),
        ("something new\n  and more", ["fit"], "error: something new"),
    ],
    ids=["nested_type", "type", "unknown_flag", "unknown_config_key", "no_file", "required",
         "class_path", "unknown_message"],
)  # fmt: skip
def test_usage_errors_are_condensed_to_the_flag(
    message: str, argv: list[str], expected: str
) -> None:
    flags = ["--trainer.max_steps", "--data.root", "--data.batch_size", "--config"]
    assert usage_error(message, argv, flags) == expected


def test_flags_are_read_from_a_help_text() -> None:
    text = "usage: x [--data.root ROOT] [-h]\n  --trainer.max_steps MAX  steps (see --data.view)"
    assert flags_in_help(text) == ["--data.root", "--data.view", "--trainer.max_steps"]
