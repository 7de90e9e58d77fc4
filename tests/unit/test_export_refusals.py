"""A model that cannot be served is refused at export time, naming the model and the reason
(`serving.export.check_exportable`, `export_dense`): a submodule outside the `embeddings` /
`dense` split (serving would silently miss it), and a request program `torch.export` cannot
trace."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from torch import nn

from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.ctr_features import CtrFeatures, CtrOutput
from lifeseq.models.interfaces import ModelDims
from lifeseq.models.zoo.ctr.smoke import SmokeConfig, SmokeCtr
from lifeseq.serving.artifacts import ExportError
from lifeseq.serving.export import check_exportable, export_dense

pytestmark = pytest.mark.unit

DIMS = ModelDims(item_rows=20, category_rows=5, behavior_rows=4, embedding_dim=4)


def smoke() -> CtrRecommender:
    return CtrRecommender(DIMS, functools.partial(SmokeCtr, config=SmokeConfig(hidden=(4,))))


def test_a_submodule_outside_the_two_parts_is_refused_naming_it() -> None:
    model = smoke()
    check_exportable(model)  # the split model is fine
    model.calibration = nn.Linear(1, 1)  # added beside `dense`: serving would never run it
    with pytest.raises(
        ExportError, match=r"CtrRecommender .*outside `embeddings` and `dense`: \['calibration'\]"
    ):
        check_exportable(model)


def test_a_plain_module_is_refused() -> None:
    with pytest.raises(ExportError, match=r"torch\.nn\.modules\.linear\.Linear: export needs"):
        check_exportable(nn.Linear(2, 2))


class DataDependent(SmokeCtr):
    """A smoke model that branches in Python on its scores: `torch.export` cannot trace it."""

    def forward(self, features: CtrFeatures) -> CtrOutput:
        out = super().forward(features)
        if float(out.logits.sum()) > 0:  # control flow on data
            return CtrOutput(out.logits * 2)
        return out


def test_a_program_that_cannot_be_traced_is_refused_naming_the_model(tmp_path: Path) -> None:
    model = CtrRecommender(DIMS, DataDependent).eval()
    with pytest.raises(ExportError, match=r"test_export_refusals\.DataDependent: torch\.export"):
        export_dense(tmp_path, model)
