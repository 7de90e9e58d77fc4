"""Conformance, sharding: one representative model per task takes one training step with its
embedding tables TorchRec-sharded over 2 ranks (gloo, CPU) and equals the same step at 1 rank
on the whole batch — dense parameters (DDP-averaged) and every table row (fused row-wise
Adagrad inside backward), within 1e-5. Worker: `sharded_step_worker.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifeseq.models.blocks.embeddings import torchrec_available
from tests.distributed.test_train_job import torchrun

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]

WORKER = Path(__file__).with_name("sharded_step_worker.py")
#: One model per task: CTR (TWIN), next-item (HSTU), masked-item (bidirectional SASRec).
REPRESENTATIVES = ("config:ctr/twin", "config:sequential/hstu", "config:sequential/cloze")
TOL = 1e-5


@pytest.mark.parametrize("case", REPRESENTATIVES)
def test_a_two_rank_sharded_step_equals_the_one_rank_step(case: str, tmp_path: Path) -> None:
    for ranks in (1, 2):
        args = [str(WORKER), "--case", case, "--out", str(tmp_path / f"ranks{ranks}")]
        torchrun(ranks, args, f"{case} at {ranks} rank(s)")
    for part in ("dense", "tables"):
        one = np.load(tmp_path / "ranks1" / f"{part}.npz")
        two = np.load(tmp_path / "ranks2" / f"{part}.npz")
        assert sorted(one.files) == sorted(two.files) and one.files
        for name in one.files:
            assert np.abs(one[name] - two[name]).max() <= TOL, (part, name)
