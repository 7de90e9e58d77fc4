"""The terminal: third-party chatter filtered unless asked for, `lifeseq` subcommands, help and
version."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from lifeseq.jobs import cli, terminal
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_logging(monkeypatch):
    """No `LIFESEQ_LOG_LEVEL` from the caller's environment (conftest undoes the rest)."""
    monkeypatch.delenv(terminal.LOG_LEVEL_ENV, raising=False)


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_filter_passes_own_info_and_only_third_party_errors():
    chatter = terminal.ChatterFilter(logging.INFO, logging.ERROR)
    assert chatter.filter(_record("lifeseq.pipeline.build", logging.INFO))
    assert chatter.filter(_record("lifeseq.trainers.callbacks", logging.WARNING))
    assert not chatter.filter(_record("lifeseq.pipeline.build", logging.DEBUG))
    for name in ("root", "torchrec.distributed.planner.stats", "lightning.pytorch", "py4j"):
        assert not chatter.filter(_record(name, logging.INFO))
        assert not chatter.filter(_record(name, logging.WARNING))
        assert chatter.filter(_record(name, logging.ERROR))


def test_configure_logging_quiet_by_default(restore_logging, capsys):
    terminal.configure_logging()
    logging.getLogger().info("fbgemm: Successfully loaded")  # FBGEMM logs on the root logger
    logging.getLogger("torchrec.distributed.planner.stats").warning("# Planner Statistics #")
    logging.getLogger("lifeseq.pipeline.build").info("[1/6] validate: 10 rows read")
    err = capsys.readouterr().err
    assert "validate: 10 rows read" in err
    assert "fbgemm" not in err and "Planner" not in err
    assert logging.getLogger("torch").level == logging.ERROR


def test_verbose_and_env_bring_third_party_lines_back(restore_logging, capsys, monkeypatch):
    terminal.configure_logging(verbose=True)
    logging.getLogger().info("fbgemm: Successfully loaded")
    assert "fbgemm: Successfully loaded" in capsys.readouterr().err
    monkeypatch.setenv(terminal.LOG_LEVEL_ENV, "WARN")
    terminal.configure_logging()
    logging.getLogger().info("fbgemm: Successfully loaded")
    logging.getLogger("torchrec").warning("planner warning")
    err = capsys.readouterr().err
    assert "fbgemm" not in err and "planner warning" in err


def test_bad_log_level_is_named(restore_logging, monkeypatch):
    monkeypatch.setenv(terminal.LOG_LEVEL_ENV, "LOUD")
    with pytest.raises(ValueError, match="LIFESEQ_LOG_LEVEL='LOUD' is not a log level"):
        terminal.configure_logging()


def test_only_own_warnings_are_shown(restore_logging, capsys):
    terminal.configure_logging()
    own = str(REPO_ROOT / "features" / "dataset.py")
    warnings.showwarning("corrupt shard", RuntimeWarning, own, 1)
    warnings.showwarning("deprecated thing", FutureWarning, "/site-packages/torchrec/x.py", 1)
    err = capsys.readouterr().err
    assert "corrupt shard" in err and "deprecated thing" not in err


def _lifeseq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifeseq.jobs.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_version_names_the_stack():
    proc = _lifeseq("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("lifeseq ") and "torchrec" in proc.stdout


def test_every_command_has_help_with_an_example():
    top = _lifeseq("--help")
    assert top.returncode == 0
    for command in (*cli.COMMANDS, *cli.BENCHES):
        assert command.module.startswith("lifeseq.jobs.")
        assert command.example.startswith("lifeseq ")
    for args in (["build"], ["export"], ["bench", "serving"], ["demo"]):
        proc = _lifeseq(*args, "--help")
        assert proc.returncode == 0, proc.stderr
        assert f"usage: lifeseq {' '.join(args)}" in proc.stdout
        assert "example:\n  lifeseq " + " ".join(args) in proc.stdout


def test_unknown_command_exits_2_naming_it():
    proc = _lifeseq("bogus")
    assert proc.returncode == 2
    assert "invalid choice: 'bogus'" in proc.stderr


def test_verbose_is_accepted_after_the_command(monkeypatch):
    args, rest = cli.build_parser().parse_known_args(["build", "--config", "c.yaml", "--verbose"])
    assert args.verbose is True and rest == ["--config", "c.yaml"]
    args, rest = cli.build_parser().parse_known_args(["--verbose", "synth", "--out", "x"])
    assert args.verbose is True and rest == ["--out", "x"]
    args, _ = cli.build_parser().parse_known_args(["synth", "--out", "x"])
    assert args.verbose is False


@pytest.mark.parametrize(
    ("tty", "given", "expected"),
    [(True, None, None), (False, None, False), (False, True, True), (True, False, False)],
)
def test_progress_bar_off_without_a_terminal_unless_given(monkeypatch, tty, given, expected):
    """None lets Lightning pick its `RichProgressBar` (rich is installed)."""
    from jsonargparse import Namespace

    from lifeseq.jobs import train

    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    trainer = Namespace(enable_progress_bar=given, callbacks=[])
    train._progress_bar_on_a_terminal(trainer)
    assert trainer.enable_progress_bar is expected
    assert trainer.callbacks == []


def test_lightning_picks_the_rich_progress_bar():
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import RichProgressBar

    trainer = Trainer(enable_progress_bar=True, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.progress_bar_callback, RichProgressBar)


def test_handler_writes_to_the_current_stderr_even_after_the_old_one_closed(monkeypatch):
    """In-process jobs (tests, notebooks) swap and close `sys.stderr`; the handler keeps no
    reference to an old one."""
    import io

    handler = terminal.CurrentStderrHandler(sys.stderr)
    record = _record("lifeseq.pipeline.build", logging.INFO)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler.handle(record)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    handler.handle(record)
    handler.flush()
    assert second.getvalue() == "message\n"
