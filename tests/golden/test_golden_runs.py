"""Golden test of the model-zoo refactor: with the same seed and data, every model that existed
before it (the smoke model, DIN-100, SIM hard/soft, ETA, TWIN, full attention, HSTU, SASRec)
logs the same training loss at every step (≤ 1e-6) and the same validation and test metrics
as the code before the refactor did (`before_zoo.json`, recorded at the commit it names by
`python -m tests.golden.runs --write`).

    .venv/bin/python -m pytest tests/golden
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.runs import FIXTURE, RUNS, GoldenRun, run

pytestmark = pytest.mark.integration

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("golden")


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())["runs"]


@pytest.mark.parametrize("golden", RUNS, ids=[g.name for g in RUNS])
def test_same_losses_and_metrics_as_before_the_model_zoo(
    golden: GoldenRun, workdir: Path, before: dict
) -> None:
    expected = before[golden.name]
    got = run(golden, workdir)
    assert len(got["train_loss"]) == len(expected["train_loss"])
    tolerance = max(TOLERANCE, golden.tolerance)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], abs=tolerance, rel=0)
    assert sorted(got["eval"]) == sorted(expected["eval"])
    for key, values in expected["eval"].items():
        assert got["eval"][key] == pytest.approx(values, abs=tolerance, rel=0), key
