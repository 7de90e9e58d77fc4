"""Per-target CTR evaluation of a build: models and the synthetic oracle, overall and by gap.

The gap of a target is how many events back its category last occurred in its window (-1: not
in the window): DIN-100 sees gaps < 100, only a long-term unit sees the rest. `lifeseq bench
ctr` and `lifeseq demo` report every model next to the oracle (`pipeline.synth_oracle`): the
generator's own probability, the ceiling of what any model can reach on `lifeseq synth` data.

    targets = collect_targets(build, "test")
    logits = model_logits(ckpt, build, "test")              # same order as `targets`
    oracle = oracle_scores(build, synth_dir, targets)
    row = ctr_metrics(sigmoid(logits), targets)             # auc, gauc, logloss
    rows = metrics_by_gap({"twin": logits, "oracle": oracle}, targets)   # AUC per gap bucket
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

#: Gap buckets (events since the target's category last occurred in its window).
GAP_BUCKETS = ((0, 100, "< 100 (DIN-100 sees it)"), (100, 1000, "100 – 999"),
               (1000, None, "≥ 1,000"))  # fmt: skip
NO_SAME_CATEGORY = "never in history"
#: Column labels of the buckets in tables.
SHORT_NAMES = {"< 100 (DIN-100 sees it)": "< 100", "100 – 999": "100–999", "≥ 1,000": "≥ 1K",
               NO_SAME_CATEGORY: "never"}  # fmt: skip
_EPS = 1e-7


@dataclass(frozen=True)
class CtrTargets:
    """Every target of one split, in the loader's unshuffled order.

    Attributes:
        user: (T,) raw user ids (str).
        item: (T,) int64 item vocab ids.
        ts: (T,) int64 request times.
        label: (T,) float32 0/1.
        gap: (T,) int64 events since the target's category last occurred in its window (-1:
            not in it).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    gap: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])


def _dataset(build: Path, split: str, max_history: int):  # noqa: ANN202 - features import is lazy
    from lifeseq.features.dataset import LifeseqDataset

    return LifeseqDataset.from_manifest(
        str(build), split, batch_size=16, max_history=max_history, shuffle=False
    )


def collect_targets(build: Path, split: str = "test", max_history: int = 100_000) -> CtrTargets:
    """The split's targets and their gaps (windows of at most `max_history` events)."""
    users, items, ts, labels, gaps = [], [], [], [], []
    for batch in _dataset(build, split, max_history).iter_worker(0):
        categories = batch.history["category"].values.numpy()
        offsets = batch.history["category"].offsets.numpy()
        for j in range(batch.num_targets):
            row = int(batch.target_user[j])
            lo = offsets[row] + int(batch.target_hist_start[j])
            hi = offsets[row] + int(batch.target_hist_len[j])
            same = np.flatnonzero(categories[lo:hi] == int(batch.target_category[j]))
            gaps.append(hi - lo - 1 - int(same[-1]) if same.size else -1)
            users.append(batch.users[row])
        items.append(batch.target_item.numpy())
        ts.append(batch.target_ts.numpy())
        labels.append(batch.label.numpy())
    return CtrTargets(
        user=np.asarray(users, dtype=object),
        item=np.concatenate(items).astype(np.int64),
        ts=np.concatenate(ts).astype(np.int64),
        label=np.concatenate(labels).astype(np.float32),
        gap=np.asarray(gaps, dtype=np.int64),
    )


def model_logits(
    ckpt: Path, build: Path, split: str = "test", unknown_targets: bool = False
) -> np.ndarray:
    """(T,) float32 logits of a trained checkpoint on the split, in `collect_targets` order;
    ids the checkpoint never trained are scored as out-of-vocabulary, as in its test run and
    its export (`trainers.cold_items`). With `unknown_targets`, every target is scored as an
    item the model does not know (item and category `OOV_ID`: serving's unknown candidate)."""
    from lifeseq.serving.export import load_trained_model
    from lifeseq.trainers.cold_items import OOV_ID, TrainedRows

    model, data = load_trained_model(ckpt, str(build))
    rows = TrainedRows.for_scoring(ckpt)
    out = []
    with torch.no_grad():
        for batch in _dataset(build, split, data.feature_config.max_history).iter_worker(0):
            if rows is not None:
                batch = rows.remap(batch)
            if unknown_targets:
                unknown = torch.full_like(batch.target_item, OOV_ID)
                batch = replace(batch, target_item=unknown, target_category=unknown.clone())
            out.append(model(batch).logits.numpy())
    return np.concatenate(out).astype(np.float32)


def untrained_items(ckpt: Path, targets: CtrTargets) -> np.ndarray | None:
    """(T,) bool: targets whose item the checkpoint never trained (scored as OOV), or None when
    the checkpoint recorded no trained rows."""
    from lifeseq.trainers.cold_items import TrainedRows

    rows = TrainedRows.from_checkpoint(ckpt)
    if rows is None or not rows.any():
        return None
    trained = rows.masks["item"].numpy()
    return ~trained[targets.item]


# --- the oracle --------------------------------------------------------------------------------


def synth_config(synth_dir: Path):  # noqa: ANN201 - pipeline import is lazy
    """The `SynthConfig` recorded in a `lifeseq synth` output's `_synth.json`."""
    from lifeseq.pipeline.synth import SUMMARY_FILE, SynthConfig

    path = Path(synth_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the oracle needs the `lifeseq synth` output the build was made from"
        )
    return SynthConfig(**json.loads(path.read_text())["config"])


@dataclass(frozen=True)
class ItemVocab:
    """A build's item vocabulary as the negative sampler sees it.

    Attributes:
        raw: (V,) int64 raw item id of each vocab id (-1 for padding and OOV).
        weight: (V,) float64 the sampler's weight of each vocab id (0 for padding and OOV):
            1 (`uniform`) or count ** alpha (`popularity`).
    """

    raw: np.ndarray
    weight: np.ndarray

    @staticmethod
    def read(build: Path) -> ItemVocab:
        """From `OUT/vocab/item` and the manifest's `targets.negative_sampling`."""
        table = pq.read_table(Path(build) / "vocab" / "item", columns=["raw_id", "id", "count"])
        ids = table.column("id").to_numpy()
        size = int(ids.max()) + 1 if ids.size else 2
        raw = np.full(size, -1, dtype=np.int64)
        raw[ids] = np.asarray(table.column("raw_id").to_pylist(), dtype=np.int64)
        targets = json.loads((Path(build) / "manifest.json").read_text())["config"]["targets"]
        weight = np.zeros(size, dtype=np.float64)
        if targets.get("negative_sampling") == "popularity":
            counts = table.column("count").to_numpy().astype(np.float64)
            weight[ids] = np.power(counts, float(targets.get("popularity_alpha", 0.75)))
        else:
            weight[ids] = 1.0
        weight[:2] = 0.0
        return ItemVocab(raw=raw, weight=weight)

    def negative_probs(self, items: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """(m,) probability that the sampler draws each vocab id for a user who saw `seen`
        (vocab ids): weight over the weight of every item the user never saw."""
        return self.weight[items] / (self.weight.sum() - self.weight[np.unique(seen)].sum())

    def sample(self, rng: np.random.Generator, n: int, seen: np.ndarray) -> np.ndarray:
        """(n,) vocab ids drawn like the build's sampler (never one of `seen`)."""
        weight = self.weight.copy()
        weight[seen] = 0.0
        cdf = np.cumsum(weight)
        return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").astype(np.int64)


def _targets_by_user(targets: CtrTargets) -> dict[str, np.ndarray]:
    order = np.argsort(targets.user, kind="stable")
    users, starts = np.unique(targets.user[order], return_index=True)
    return dict(zip(users, np.split(order, starts[1:]), strict=True))


def _oracle_of(cfg, vocab: ItemVocab, state, positions, seen, ids: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """The oracle's probabilities of the vocab ids `ids` at `positions` of one user."""
    from lifeseq.pipeline.synth_oracle import oracle_probabilities

    negative = vocab.negative_probs(ids, seen)
    return oracle_probabilities(cfg, state, positions, vocab.raw[ids], negative)


def oracle_scores(
    build: Path,
    synth_dir: Path,
    targets: CtrTargets,
    *,
    fresh_positives: np.random.Generator | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,) the generator's probability that each target is the real positive.

    Args:
        build: the build (its item vocabulary maps ids back to the generator's).
        synth_dir: the `lifeseq synth` output the build was made from.
        targets: `collect_targets` of the build.
        fresh_positives: when given, also return a Monte-Carlo replica of the split: for every
            target, the oracle's score of a fresh positive drawn from the generator's model at
            its request time and of a fresh negative drawn like the build's sampler —
            `(scores, fresh_scores, fresh_labels)`.

    Raises:
        ValueError: a target's user or item is not one the generator made.
    """
    from lifeseq.pipeline.synth import generate_user_events, user_state
    from lifeseq.pipeline.synth_oracle import sample_positive_items

    cfg = synth_config(synth_dir)
    vocab = ItemVocab.read(build)
    vocab_id = np.zeros(int(vocab.raw.max()) + 1, dtype=np.int64)
    vocab_id[vocab.raw[vocab.raw > 0]] = np.flatnonzero(vocab.raw > 0)
    scores = np.zeros(len(targets), dtype=np.float64)
    fresh = np.zeros(2 * len(targets), dtype=np.float64)
    fresh_labels = np.tile(np.array([1.0, 0.0], dtype=np.float32), len(targets))
    for user, rows in _targets_by_user(targets).items():
        index = int(user) - 1 if str(user).isdigit() else -1
        if index < 0:
            raise ValueError(f"user {user!r} is not a `lifeseq synth` user id (1, 2, ...)")
        events = generate_user_events(cfg, index)
        state = user_state(cfg, index)
        seen = vocab_id[events["item_id"]]
        positions = np.searchsorted(events["ts"], targets.ts[rows], side="left")
        positions = np.minimum(positions, events["ts"].shape[0] - 1)
        items = targets.item[rows]
        if (vocab.raw[items] <= 0).any():
            raise ValueError(f"user {user!r}: a target item is padding or OOV in the vocab")

        score = functools.partial(_oracle_of, cfg, vocab, state, positions, seen)
        scores[rows] = score(items)
        if fresh_positives is not None:
            positive = sample_positive_items(cfg, state, positions, fresh_positives)
            fresh[2 * rows] = score(vocab_id[positive])
            fresh[2 * rows + 1] = score(vocab.sample(fresh_positives, rows.size, seen))
    if fresh_positives is not None:
        return scores, fresh, fresh_labels
    return scores


# --- metrics -------------------------------------------------------------------------------------


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Global AUC (None when one class is missing)."""
    if labels.size == 0 or labels.min() == labels.max():
        return None
    from torchmetrics.functional.classification import binary_auroc

    return float(
        binary_auroc(torch.from_numpy(np.asarray(scores, dtype=np.float64)),
                     torch.from_numpy(labels).long())
    )  # fmt: skip


def gauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> float | None:
    """Per-user AUC weighted by the user's targets (`trainers.metrics.GroupedAUC`)."""
    from lifeseq.trainers.metrics import GroupedAUC

    metric = GroupedAUC()
    _, groups = np.unique(users, return_inverse=True)
    metric.update(
        torch.from_numpy(np.asarray(scores, dtype=np.float64)),
        torch.from_numpy(labels).long(),
        torch.from_numpy(groups.astype(np.int64)),
    )
    value = float(metric.compute())
    return None if np.isnan(value) else value


def logloss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def ctr_metrics(probs: np.ndarray, targets: CtrTargets) -> dict[str, float | None]:
    """AUC, GAUC and logloss of probabilities over all targets."""
    return {
        "auc": auc(probs, targets.label),
        "gauc": gauc(probs, targets.label, targets.user),
        "logloss": logloss(probs, targets.label),
    }


def bucket_masks(gap: np.ndarray) -> dict[str, np.ndarray]:
    """Bucket name → (T,) bool mask of its targets (the `GAP_BUCKETS`, then no same category)."""
    masks = {}
    for lo, hi, name in GAP_BUCKETS:
        masks[name] = (gap >= lo) & (gap < (hi if hi is not None else np.iinfo(np.int64).max))
    masks[NO_SAME_CATEGORY] = gap < 0
    return masks


def metrics_by_gap(scores: dict[str, np.ndarray], targets: CtrTargets) -> list[dict[str, Any]]:
    """Per gap bucket: target count, positive share and each scorer's AUC."""
    rows = []
    for name, mask in bucket_masks(targets.gap).items():
        row: dict[str, Any] = {
            "bucket": name,
            "targets": int(mask.sum()),
            "positive_share": float(targets.label[mask].mean()) if mask.any() else None,
        }
        for scorer, values in scores.items():
            row[scorer] = auc(values[mask], targets.label[mask])
        rows.append(row)
    return rows


def far_mask(gap: np.ndarray) -> np.ndarray:
    """(T,) targets whose category last occurred >= 100 events back (DIN-100 cannot see it)."""
    return gap >= 100
