"""`LifeseqDataModule`: the pipeline's shards as Lightning train/val/test dataloaders.

    lifeseq train fit --config configs/smoke.yaml --data.root OUT --data.batch_size 64

`setup()` (every rank) reads `OUT/manifest.json`, builds the `FeatureSchema` that models read
in `configure_model()` (`trainer.datamodule.schema`), and plans the shards for this rank
(`trainer.global_rank` / `trainer.world_size`): train/valid/test are the manifest's splits.
Every rank yields the same number of batches; padding batches have `weight == 0.0` (see
`features.dataset`). Loader counters (corrupt shards, missing samples, ...) arrive with each
batch and are summed in `data_stats` (this rank only) for the trainer to log.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L

from lifeseq.features.batch import CtrBatch, GenerativeBatch
from lifeseq.features.dataset import LifeseqDataLoader, LifeseqDataset, check_loader_args
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.features.windows import TrainingWindows
from lifeseq.pipeline import storage

#: File extensions of raw event files (`lifeseq build --input`), told apart from a build.
RAW_EVENT_SUFFIXES = ("parquet", "csv", "jsonl", "json", "data", "dat", "inter", "txt")


class LifeseqDataModule(L.LightningDataModule):
    """Train/val/test dataloaders over a pipeline output directory.

    Args:
        root: pipeline output directory `OUT` (local path or URI); `OUT/manifest.json` is read
            in `setup()`.
        view: `ctr` (`CtrBatch`) or `generative` (`GenerativeBatch`).
        batch_size: users per batch (each with all its targets).
        num_workers: DataLoader worker processes per rank (0 = in the training process).
        max_history: CTR view: most recent history events kept per user (1..100000).
        max_len: generative view: most recent events kept per user sequence; also the size of
            the `position` table.
        shuffle_buffer: users in each worker's shuffle buffer (training only).
        seed: seed of the shard order and shuffle buffers (with the epoch).
        strict: raise on a damaged shard or bad tar member instead of skipping and counting it.
        embedding_dim: width of the schema's embedding tables.
        time_gap_buckets: log2 time-gap buckets (`features.schema.bucketize_time_gap`).
        eval_batch_size: users per validation/test batch (default: `batch_size`).
        pin_memory: pin batches in page-locked memory (GPU training).
        train_windows: generative view: train over each user's whole history in windows of
            `max_len` events (`features.windows.TrainingWindows`: `{context: N}`), not only
            the most recent `max_len`; null (default) = the most recent `max_len` only.

    Raises:
        ValueError: an argument out of range, naming it.
    """

    def __init__(
        self,
        root: str,
        view: str = "ctr",
        batch_size: int = 64,
        num_workers: int = 0,
        max_history: int = 1024,
        max_len: int = 200,
        shuffle_buffer: int = 256,
        seed: int = 0,
        strict: bool = False,
        embedding_dim: int = 64,
        time_gap_buckets: int = 32,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        train_windows: TrainingWindows | None = None,
    ) -> None:
        super().__init__()
        check_loader_args(
            "data.",
            view=view,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            positive={"batch_size": batch_size, "eval_batch_size": eval_batch_size},
        )
        self.root = root
        self.view = view
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.strict = strict
        self.pin_memory = pin_memory
        self.train_windows = train_windows
        # Validates embedding_dim, time_gap_buckets, max_history, max_len (naming the field).
        self.feature_config = FeatureConfig(
            embedding_dim=embedding_dim,
            time_gap_buckets=time_gap_buckets,
            max_history=max_history,
            max_len=max_len,
        )
        # Not logged as hparams: `seed` would clash with the model's own `seed` in the logger.
        self.save_hyperparameters(logger=False)
        self.data_stats: Counter[str] = Counter()
        self._schema: FeatureSchema | None = None

    @property
    def schema(self) -> FeatureSchema:
        """The feature schema of `root` (available after `setup()`).

        Raises:
            RuntimeError: `setup()` has not run yet.
        """
        if self._schema is None:
            raise RuntimeError("LifeseqDataModule.schema: call setup() first (Lightning does)")
        return self._schema

    def check_root(self) -> None:
        """Check that `root` is a `lifeseq build` output this loader reads, before anything
        starts (`lifeseq train` asks at start-up; `setup()` would fail later, mid-start).

        Raises:
            FileNotFoundError: `root` does not exist, or holds no `manifest.json` (the message
                says whether it holds raw event files, and the `lifeseq build` that makes one).
            ValueError: the manifest is not one this loader reads (naming the field).
        """
        flag = f"--data.root {self.root}"
        if not storage.exists(self.root):
            raise FileNotFoundError(
                f"{flag}: no such directory; pass the --output of a `lifeseq build`"
            )
        manifest = storage.join(self.root, "manifest.json")
        if not storage.exists(manifest):
            raw = [i for i in storage.list_files(self.root) if i.extension in RAW_EVENT_SUFFIXES]
            what = (
                f"holds {len(raw)} raw event file(s) ({raw[0].base_name}, ...), not a build"
                if raw
                else "is not a lifeseq build (no manifest.json)"
            )
            raise FileNotFoundError(
                f"{flag} {what}: run `lifeseq build --config configs/pipeline/synthetic.yaml "
                f"--input {self.root} --output OUT` and pass --data.root OUT"
            )
        try:
            FeatureSchema.from_manifest(self.root, self.feature_config)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{flag}: {err}") from None

    def prepare_data(self) -> None:
        """Nothing to do: the shards already exist, and no state may be set here (rank 0 only)."""

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest and build the schema (every rank).

        Raises:
            FileNotFoundError: `root/manifest.json` does not exist.
            ValueError: its `schema_version`, `members` or `vocab` do not match the loader.
        """
        self._schema = FeatureSchema.from_manifest(self.root, self.feature_config)

    def _rank(self) -> tuple[int | None, int | None]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None  # the dataset asks torch.distributed, else assumes one process

    def dataset(self, split: str) -> LifeseqDataset:
        """The dataset of `split` (`train` shuffles; `valid`/`test` read in manifest order)."""
        rank, world_size = self._rank()
        train = split == "train"
        return LifeseqDataset.from_manifest(
            self.root,
            split,
            view=self.view,
            batch_size=self.batch_size if train else self.eval_batch_size,
            max_history=self.feature_config.max_history,
            max_len=self.feature_config.max_len,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            strict=self.strict,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            train_windows=self.train_windows if train else None,
        )

    def _loader(self, split: str) -> LifeseqDataLoader:
        return LifeseqDataLoader(self.dataset(split), pin_memory=self.pin_memory)

    def train_dataloader(self) -> LifeseqDataLoader:
        """Shuffled training batches; `sampler.set_epoch` (called by Lightning) reseeds them."""
        return self._loader("train")

    def val_dataloader(self) -> LifeseqDataLoader:
        """Validation batches of the `valid` split, in manifest order."""
        return self._loader("valid")

    def test_dataloader(self) -> LifeseqDataLoader:
        """Test batches of the `test` split, in manifest order."""
        return self._loader("test")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Sum the loader counters each batch carries into `data_stats`."""
        if isinstance(batch, CtrBatch | GenerativeBatch):
            self.data_stats.update(batch.loader_stats)
        return batch
