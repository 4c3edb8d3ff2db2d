"""``edge-ssd train``: train a MobileNet-SSD (pytorch-ssd's ``train_ssd.py`` flags; underscores also accepted)."""

from __future__ import annotations

from . import _args as A


def _flag(p, name: str, *more: str, **kw):
    """Add ``--name-with-hyphens`` plus its ``--underscore_alias`` (pytorch-ssd's original spelling)."""
    names = [name, *more]
    alias = name.replace("-", "_")
    if alias != name and alias.lstrip("_") != name.lstrip("-"):
        names.append("--" + alias.lstrip("_"))
    return p.add_argument(*names, **kw)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a MobileNet-SSD on an Open Images or VOC dataset (or build the cached test model)",
        description="Train mb1-ssd / mb1-ssd-lite / mb2-ssd-lite like pytorch-ssd's train_ssd.py. The best "
        "checkpoint (by validation mAP, else loss) is kept in --checkpoint-folder with labels.txt beside it; "
        "last.pth holds the full state for --resume.",
    )
    _flag(p, "--dataset-type", default="open_images", choices=["open_images", "voc"],
          help="dataset format (default open_images)")
    _flag(p, "--datasets", "--data", nargs="+", default=[], metavar="DIR", help="dataset root(s)")
    _flag(p, "--validation-dataset", metavar="DIR", help="dataset root for validation (default: first --datasets)")
    _flag(p, "--net", "--arch", default="mb1-ssd", choices=["mb1-ssd", "mb1-ssd-lite", "mb2-ssd-lite"],
          help="architecture (default mb1-ssd)")
    _flag(p, "--width-mult", "--mb2-width-mult", type=A.positive_float, default=1.0,
          help="width multiplier (default 1.0)")
    _flag(p, "--freeze-base-net", action="store_true", help="freeze the base net, train extras and heads")
    _flag(p, "--freeze-net", action="store_true", help="freeze everything but the heads")
    _flag(p, "--pretrained-ssd", metavar="PTH", help="start from an SSD checkpoint (heads re-initialised when "
          "the class count differs)")
    _flag(p, "--resume", metavar="PTH", help="resume from last.pth (full state) or a weights-only checkpoint")
    _flag(p, "--lr", "--learning-rate", type=A.positive_float, default=0.01,
          help="learning rate of the heads (default 0.01)")
    _flag(p, "--momentum", type=float, default=0.9)
    _flag(p, "--optimizer", default="sgd", choices=["sgd", "adam"],
          help="sgd with momentum (pytorch-ssd, default) or adam (AdamW; faster from scratch)")
    _flag(p, "--max-expand", type=A.positive_float, default=4.0,
          help="largest zoom-out of the expand augmentation (default 4)")
    _flag(p, "--weight-decay", type=float, default=5e-4)
    _flag(p, "--gamma", type=float, default=0.1, help="multi-step decay factor")
    _flag(p, "--base-net-lr", type=float, help="learning rate of the base net (default --lr)")
    _flag(p, "--extra-layers-lr", type=float, help="learning rate of the extra layers (default --lr)")
    _flag(p, "--scheduler", default="cosine", choices=["cosine", "multi-step", "none"])
    _flag(p, "--milestones", default="80,100", help="multi-step epochs (default 80,100)")
    _flag(p, "--t-max", type=float, help="cosine period in epochs (default --num-epochs)")
    _flag(p, "--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up (default 0)")
    _flag(p, "--batch-size", type=A.positive_int, default=32)
    _flag(p, "--num-epochs", "--epochs", type=A.positive_int, default=120)
    _flag(p, "--num-workers", "--workers", type=A.nonneg_int, default=2, help="DataLoader workers (default 2)")
    _flag(p, "--mp-context", choices=["fork", "spawn", "forkserver"], help="worker start method")
    _flag(p, "--validation-epochs", type=A.positive_int, default=5, help="validate every N epochs (default 5)")
    _flag(p, "--no-validation-map", action="store_true", help="validation loss only (skip mAP)")
    _flag(p, "--checkpoint-folder", "--model-dir", default="models", help="where checkpoints go (default models/)")
    _flag(p, "--seed", type=int, default=0)
    _flag(p, "--threads", type=A.threads, help="torch CPU threads")
    _flag(p, "--no-channel-swap", action="store_true", help="no random RGB channel permutation in augmentation")
    _flag(p, "--max-steps", type=A.positive_int, help="stop after this many optimiser steps")
    _flag(p, "--test-model", action="store_true",
          help="export (or find in the cache) the shipped synthetic test model and print where it is "
               "(the same as `edge-ssd testmodel`)")
    _flag(p, "--cache-dir", help="cache for --test-model (default $EDGE_SSD_CACHE or ~/.cache/edge-ssd)")
    A.add_no_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..errors import UserError

    if args.test_model:
        from ..train.testmodel import get_test_model

        tm = get_test_model(cache_dir=args.cache_dir, progress=not args.no_progress)
        print(json.dumps(tm.to_json(), indent=1))
        return 0
    if not args.datasets:
        raise UserError("no training data: pass --datasets DIR (an Open Images or VOC root), or --test-model")
    from ..train.trainer import TrainConfig, train

    cfg = TrainConfig(
        dataset_type=args.dataset_type, datasets=list(args.datasets), validation_dataset=args.validation_dataset,
        net=args.net, width_mult=args.width_mult, batch_size=args.batch_size, num_epochs=args.num_epochs,
        lr=args.lr, momentum=args.momentum, optimizer=args.optimizer, max_expand=args.max_expand,
        weight_decay=args.weight_decay, gamma=args.gamma,
        base_net_lr=args.base_net_lr, extra_layers_lr=args.extra_layers_lr, scheduler=args.scheduler,
        milestones=args.milestones, t_max=args.t_max, warmup_epochs=args.warmup_epochs,
        pretrained_ssd=args.pretrained_ssd, resume=args.resume, freeze_base_net=args.freeze_base_net,
        freeze_net=args.freeze_net, num_workers=args.num_workers, mp_context=args.mp_context,
        validation_epochs=args.validation_epochs, validation_map=not args.no_validation_map,
        checkpoint_folder=args.checkpoint_folder, seed=args.seed, threads=args.threads,
        channel_swap=not args.no_channel_swap, max_steps=args.max_steps,
    )  # fmt: skip
    res = train(cfg, progress=not args.no_progress)
    print(f"best checkpoint: {res.best_path} (epoch {res.best.get('epoch')}); labels: {res.labels_path}; "
          f"{res.seconds:.0f} s")
    return 0
