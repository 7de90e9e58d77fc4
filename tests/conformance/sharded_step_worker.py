"""One rank of the sharded-step conformance test: a zoo model config, TorchRec-sharded at the
world size torchrun gives, takes one training step on its share of a fixed global batch.

    torchrun --nproc-per-node 2 tests/conformance/sharded_step_worker.py --case config:ctr/twin --out DIR

Rank r reads users r, r + W, ... of the global batch (every user the same size, so each rank's
mean loss weighs equally and W ranks average to the global mean). Dropout is off (eval mode)
and sequential losses score every item (full softmax), so no rank draws random numbers another
world size would not; the dense optimizer is SGD (below); the tables keep the config's fused
optimizer. Rank 0 writes `DIR/dense.npz` (dense parameters after the step) and
`DIR/tables.npz` (every table's rows after the step, looked up through the sharded model).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lifeseq.features.batch import collate_ctr, collate_generative  # noqa: E402
from lifeseq.features.jagged import Jagged  # noqa: E402
from lifeseq.trainers.platform_module import module_from_hparams  # noqa: E402
from tests.conformance import planted  # noqa: E402
from tests.conformance.cases import config_cases  # noqa: E402

USERS = 8


def global_samples(family: str) -> list:
    """The global batch's users."""
    if family == "ctr":
        return [planted.far_history_sample(u) for u in range(USERS)]
    return [planted.rule_sample(u, length=12) for u in range(USERS)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    (case,) = [c for c in config_cases() if c.name == args.case]
    hparams = copy.deepcopy(case.hparams)
    if case.family == "sequential":
        hparams["loss"] = {**(hparams.get("loss") or {}), "full_softmax": True}
    # SGD for the dense part: Adam's first step is ~lr * sign(g) whatever |g|, so parameters
    # whose gradient is float noise around 0 (an attention key bias) would move by ~lr in
    # directions set by the noise; SGD moves every parameter by lr * g.
    hparams["optimizer"] = {"name": "sgd", "lr": 0.1}
    module = module_from_hparams(hparams, backend="torchrec")
    module.setup_model(case.schema())
    module.eval()
    optimizer = module.configure_optimizers()
    samples = global_samples(case.family)[rank::world]
    if case.family == "ctr":
        batch = collate_ctr(samples, max_history=planted.HISTORY)
    else:
        batch = collate_generative(samples, planted.SEQ_MAX_LEN)
    loss = module.step(batch, train=False)[0] if case.masked else module.training_loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    core = module.core
    tables = {}
    for table in core.embeddings.tables:
        ids = torch.arange(table.num_embeddings)
        feature = table.feature_names[0]
        rows = core.embeddings({feature: Jagged(ids, torch.ones_like(ids))})[feature].values
        tables[table.name] = rows.detach().numpy()
    dense = {
        name: param.detach().numpy()
        for name, param in core.named_parameters()
        if not name.startswith("embeddings.")
    }
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(args.out / "dense.npz", **dense)
        np.savez(args.out / "tables.npz", **tables)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: a background thread (gloo, TorchRec) still alive at exit
    # aborts a rank now and then ("terminate called without an active exception", SIGABRT),
    # after the results are written. Everything is flushed and closed here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
