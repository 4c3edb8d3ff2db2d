"""``edge-ssd synth``: generate a synthetic detection dataset in the seed's open-images layout."""

from __future__ import annotations

from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic open-images dataset (coloured shapes on textured backgrounds)",
        description="Write OUT/sub-{train,test}-annotations-bbox.csv, OUT/train/*.jpg, OUT/test/*.jpg and "
        "OUT/open-images-model-labels.txt; deterministic given --seed.",
    )
    p.add_argument("out", metavar="OUT", help="output directory (created)")
    p.add_argument("--train", type=A.nonneg_int, default=1000, help="number of training images (default 1000)")
    p.add_argument("--test", type=A.nonneg_int, default=200, help="number of test images (default 200)")
    p.add_argument("--validation", type=A.nonneg_int, default=0, help="number of validation images (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-scale", "--min_scale", type=A.unit_float, default=0.08,
                   help="smallest object side as a fraction of the image (default 0.08)")
    p.add_argument("--max-scale", "--max_scale", type=A.unit_float, default=0.9,
                   help="largest object side as a fraction of the image (default 0.9)")
    p.add_argument("--max-objects", "--max_objects", type=A.positive_int, default=4, help="objects per image, at most")
    p.add_argument("--video", metavar="PATH", help="also render a clip of moving shapes to PATH (.avi MJPG)")
    p.add_argument("--frames", type=A.positive_int, default=60, help="video frames (default 60)")
    A.add_no_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError
    from ..train.synth import SynthConfig, make_dataset, make_video

    if args.train < 0 or args.test < 0 or args.validation < 0:
        raise UserError("--train/--test/--validation must be >= 0: pass image counts")
    if not 0 < args.min_scale <= args.max_scale <= 1:
        raise UserError(f"bad scales {args.min_scale}..{args.max_scale}: need 0 < --min-scale <= --max-scale <= 1")
    if args.max_objects < 1:
        raise UserError("--max-objects must be >= 1")
    cfg = SynthConfig(min_scale=args.min_scale, max_scale=args.max_scale, max_objects=args.max_objects)
    root = make_dataset(args.out, train=args.train, test=args.test, seed=args.seed, cfg=cfg,
                        validation=args.validation, progress=not args.no_progress)
    print(f"wrote {args.train} train / {args.test} test images to {root}")
    if args.video:
        gts = make_video(args.video, n_frames=args.frames, seed=args.seed)
        print(f"wrote {len(gts)} frames to {args.video}")
    return 0
