"""`lifeseq migrate`: a config from an older lifeseq (before the `lifeseq.*` namespace, or before
the model zoo), or a checkpoint from before the model zoo → today's form (`trainers.legacy`).
Checkpoints from before the namespace need nothing: they load as they are.

    lifeseq migrate RUN/config.yaml --out RUN/config.zoo.yaml        # a LightningCLI config
    lifeseq migrate RUN/checkpoints/last.ckpt --out RUN/checkpoints/last.zoo.ckpt

A config's class paths move under `lifeseq.` (`models.zoo.ctr.smoke.SmokeCtr` becomes
`lifeseq.models.zoo.ctr.smoke.SmokeCtr`). A pre-zoo config keeps everything but its `model:`
section, which names today's task and zoo model
(e.g. `trainers.lifelong_module.LifelongCtrModule` with `arch.long_term: twin` becomes
`trainers.tasks.ctr.CtrModule` + `models.zoo.ctr.lifelong.LifelongCtr` + `models.zoo.long_term.twin.Twin`).
A checkpoint is copied with its hyper-parameters migrated and its dense parameters renamed
(tensor files unchanged), so `lifeseq train test/fit --ckpt_path` and `lifeseq export` load it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from lifeseq.pipeline.yaml_files import read_yaml
from lifeseq.trainers.legacy import migrate_checkpoint, migrate_config


def main(argv: list[str] | None = None) -> int:
    """Migrate one config file or checkpoint directory; exit 1 with a message on bad input."""
    parser = argparse.ArgumentParser(
        prog="lifeseq migrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="a config.yaml or a checkpoint directory")
    parser.add_argument("--out", type=Path, help="where to write (a config: default stdout)")
    args = parser.parse_args(argv)
    try:
        if args.path.is_dir():
            if args.out is None:
                raise ValueError("--out: required for a checkpoint directory")
            hparams = migrate_checkpoint(args.path, args.out)
            print(f"migrated {args.path} -> {args.out} ({hparams['_class_path']})")
            return 0
        if not args.path.is_file():
            raise FileNotFoundError(f"{args.path}: no such config file or checkpoint directory")
        config = read_yaml(args.path) or {}
        text = yaml.safe_dump(migrate_config(config), sort_keys=False)
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
            print(f"migrated {args.path} -> {args.out}")
        return 0
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
