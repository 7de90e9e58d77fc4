"""Start-up checks of a training run: can the task train the model YAML chose, on the data view
the run reads? `lifeseq train` asks `fit_error` before the Trainer exists and, given a message,
prints it and exits 1 (`jobs.train`): one or two lines naming the task, the model and what
fits; no traceback, nothing written.

* A task reads one data view (`PlatformModule.data_view`): the CTR task `ctr` batches, the
  sequential tasks `generative` ones — a CTR model on generative data (or a sequential task on
  CTR data) would fail at its first batch.
* A full softmax is refused over a catalog larger than its loss allows (`catalog_error`, from
  the build's manifest: the one check that needs the real vocabulary).
* A CTR window the machine cannot hold is refused (`window_memory_error`, from the build's
  longest user): a batch holds up to `batch_size` users of `min(max_history, longest)` events.
* The model must build for the data's widths: every config check runs, and a sequential task
  refuses an encoder whose direction does not suit it (`direction_error`). Decided: a causal
  encoder under the masked-item task is refused too — each hidden event would be predicted
  from the events before it only, which the next-item task trains at every position without
  hiding any, so the message names `NextItemModule`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import is_dataclass
from typing import Any

from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.sampled_softmax import FIRST_ITEM_ID, SoftmaxLossConfig
from lifeseq.models.blocks.seeding import seeded_init
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, class_path
from lifeseq.models.zoo import discover
from lifeseq.trainers.platform_module import EmbeddingConfig, PlatformModule

#: Vocabulary sizes of the throwaway model `fit_error` builds (the smallest valid tables: the
#: manifest is not read at start-up; the widths are the run's).
PROBE_VOCAB = {"item": FIRST_ITEM_ID + 1, "category": 3, "behavior": 3}
#: Where the configs of each data view's tasks are.
VIEW_CONFIGS = {"ctr": "configs/ctr/ or configs/smoke.yaml", "generative": "configs/sequential/"}
NEXT_ITEM_TASK = "lifeseq.trainers.tasks.next_item.NextItemModule"
MASKED_ITEM_TASK = "lifeseq.trainers.tasks.masked_item.MaskedItemModule"


def fit_error(module: PlatformModule, view: str, config: FeatureConfig) -> str | None:
    """Why `module` cannot train its model on `view` batches of `config`'s widths, or None.

    Builds a throwaway model with `PROBE_VOCAB` torch tables (the global RNG and the module are
    left as they were), so every check the model makes of its config runs before training.

    Returns:
        `error: ...` in one or two lines, naming the task, the model and what fits.
    """
    schema = FeatureSchema.from_vocab(PROBE_VOCAB, config)
    # The probe's tables are plain torch ones: the checks concern the dense part, and a refusal
    # need not load TorchRec's kernels.
    backend, module.embedding = module.embedding, EmbeddingConfig("torch")
    try:
        with seeded_init(module.seed):
            model = module.build_model(schema)
    except ValueError as error:
        return f"error: {error}"
    finally:
        module.embedding = backend
    if module.data_view and view != module.data_view:
        wanted = module.data_view
        models = ", ".join(zoo_paths(model.describe())) or class_path(model)
        return (
            f"error: {class_path(module)} (model {models}) trains on data.view {wanted!r}, but "
            f"data.view is {view!r}.\nWhat fits: --data.view {wanted} on a build for it "
            f"({VIEW_CONFIGS.get(wanted, wanted)}); {view} data trains the tasks of "
            f"{VIEW_CONFIGS.get(view, view)}"
        )
    return None


def catalog_error(module: PlatformModule, schema: FeatureSchema) -> str | None:
    """Why `module` cannot train over the catalog of `schema` (the run's manifest), or None:
    a full softmax over more item rows than its loss allows (`SoftmaxLossConfig.catalog_error`).
    """
    loss = getattr(module, "loss_config", None)
    if not isinstance(loss, SoftmaxLossConfig):
        return None
    error = loss.catalog_error(schema.tables["item"].num_embeddings)
    return f"error: {error}" if error else None


def zoo_paths(value: Any) -> list[str]:
    """Class paths under `models.zoo` in a `describe()` tree, in order, without repeats."""
    if isinstance(value, dict):
        found = [p for v in value.values() for p in zoo_paths(v)]
    elif isinstance(value, str) and value.startswith("lifeseq.models.zoo."):
        found = [value]
    else:
        found = []
    return list(dict.fromkeys(found))


def direction_error(
    task: type, causal: bool, encoder: SequenceEncoder, dims: ModelDims
) -> str | None:
    """The refusal of `encoder` by a sequential `task` that trains `causal` (or bidirectional)
    encoders, when the encoder's direction differs; None when it suits.

    Lists the zoo encoders that suit the task (each built with its default config for `dims`;
    one whose config has a `causal` field suits either way, with that field set).
    """
    if encoder.causal == causal:
        return None
    wanted, other = ("causal", MASKED_ITEM_TASK) if causal else ("bidirectional", NEXT_ITEM_TASK)
    found = "bidirectional" if causal else "causal"
    suiting = []
    with seeded_init(dims.seed):
        built = [cls(dims) for cls in discover(SequenceEncoder)]
    for candidate in built:
        config = getattr(candidate, "config", None)
        fields = {f.name for f in dataclasses.fields(config)} if is_dataclass(config) else set()
        if candidate.causal == causal:
            suiting.append(class_path(candidate))
        elif "causal" in fields:
            suiting.append(f"{class_path(candidate)} (config.causal: {str(causal).lower()})")
    return (
        f"{task.__module__}.{task.__qualname__} trains {wanted} encoders, but "
        f"{class_path(encoder)} is {found}.\nWhat fits: this encoder under {other}, or a "
        f"{wanted} encoder here: {', '.join(suiting)}"
    )


#: Bytes one history event costs in a training step, per embedding column, and fixed: measured
#: 740 bytes per event for TWIN at D = 16 (forward + backward on CPU, 20K → 200K events, 64
#: targets). A lower bound for units that keep per-(target, event) activations (full
#: attention: ~50 KB per event at 64 targets).
TRAIN_BYTES_PER_EVENT_PER_DIM = 48
TRAIN_BYTES_PER_EVENT_FIXED = 64
#: Share of the available memory one batch's history may take (the rest: tables, the model,
#: the loader's prefetched batches).
WINDOW_MEMORY_SHARE = 0.5


def window_bytes(users: int, events_per_user: int, embedding_dim: int, train: bool) -> int:
    """Estimated bytes of one batch's history: `users` × `events_per_user` events; evaluation
    (no gradient) costs half a training step's."""
    per_event = TRAIN_BYTES_PER_EVENT_PER_DIM * embedding_dim + TRAIN_BYTES_PER_EVENT_FIXED
    return users * events_per_user * per_event // (1 if train else 2)


def window_memory_error(
    batch_size: int,
    eval_batch_size: int,
    max_history: int,
    longest_user: int | None,
    embedding_dim: int,
    available_bytes: int | None,
) -> str | None:
    """Why batches of CTR windows of `max_history` events do not fit in `available_bytes`, or None.

    A batch holds each user's history once, at most `min(max_history, longest_user)` events
    (the build's longest user, `manifest.max_user_events`).

    Returns:
        `error: ...` in two lines naming the numbers and what to lower.
    """
    if not available_bytes:
        return None
    events = min(max_history, longest_user) if longest_user else max_history
    need = max(
        window_bytes(batch_size, events, embedding_dim, train=True),
        window_bytes(eval_batch_size, events, embedding_dim, train=False),
    )
    budget = int(available_bytes * WINDOW_MEMORY_SHARE)
    if need <= budget:
        return None
    fits = max(1, budget // window_bytes(1, 1, embedding_dim, train=True))
    return (
        f"error: data.max_history {max_history:,} (this build's longest user: "
        f"{longest_user or 'unknown'}) × data.batch_size {batch_size} / eval_batch_size "
        f"{eval_batch_size} needs ~{_size(need)} for one batch's history "
        f"(embedding_dim {embedding_dim}), more than half of the {_size(available_bytes)} "
        f"available here.\nWhat fits: batch_size × max_history <= {fits:,} events per batch "
        "(lower --data.max_history, --data.batch_size or --data.eval_batch_size), or a machine "
        "with more memory"
    )


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def available_memory_bytes(accelerator: str | None) -> int | None:
    """Free memory of the device a run trains on: the first CUDA device's free memory when the
    accelerator is a GPU and CUDA is there, else the host's `MemAvailable` (Linux); None when
    unknown."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
