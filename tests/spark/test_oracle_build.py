"""The synthetic oracle on a real build (`jobs.ctr_eval.oracle_scores`): vocab ids map back to
the generator's items, and its AUC on the build's (training) targets matches a Monte-Carlo replica
drawn from the generator at the same request times (popularity and uniform negatives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lifeseq.jobs import ctr_eval
from lifeseq.pipeline.build import run_build
from lifeseq.pipeline.config import config_from_dict
from lifeseq.pipeline.synth import SynthConfig, generate_user_events, write_synthetic
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.spark

SYNTH = SynthConfig(
    users=120, seed=5, items=4000, categories=50, median_events=500, max_events=2000,
    long_term_interests=8, long_term_share=0.2,
)  # fmt: skip


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oracle") / "events"
    write_synthetic(SYNTH, str(out))
    return out


@pytest.mark.parametrize("sampling", ["popularity", "uniform"])
def test_oracle_on_a_build_matches_fresh_draws(
    spark, events: Path, tmp_path: Path, sampling: str
) -> None:
    data = yaml.safe_load((REPO_ROOT / "configs/pipeline/ctr_bench.yaml").read_text())
    data["targets"].update(negative_sampling=sampling, max_targets_per_user=None)
    data["spark"] = {}
    cfg = config_from_dict(data)
    build = tmp_path / "build"
    run_build(spark, cfg, [str(events)], str(build))
    targets = ctr_eval.collect_targets(build, "train")
    assert len(targets) > 2000

    vocab = ctr_eval.ItemVocab.read(build)
    positives = np.flatnonzero(targets.label == 1)[:200]
    for j in positives:  # a positive's item is the generator's item at its request time
        user = generate_user_events(SYNTH, int(targets.user[j]) - 1)
        at = np.flatnonzero(user["ts"] == targets.ts[j])
        assert vocab.raw[targets.item[j]] in user["item_id"][at]

    scores, fresh, fresh_labels = ctr_eval.oracle_scores(
        build, events, targets, fresh_positives=np.random.default_rng(0)
    )
    real_auc, fresh_auc = ctr_eval.auc(scores, targets.label), ctr_eval.auc(fresh, fresh_labels)
    assert real_auc > 0.85
    assert real_auc == pytest.approx(fresh_auc, abs=0.015)
    assert ctr_eval.logloss(scores, targets.label) < 0.5
