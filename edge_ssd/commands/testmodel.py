"""``edge-ssd testmodel``: the shipped synthetic test model (exported into the cache), or ``--rebuild`` it."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "testmodel",
        help="export the shipped synthetic test model into the cache and print it, or --rebuild (retrain) it",
        description="The trained test model ships with edge-ssd (a width-0.25 mb1-ssd trained on synthetic "
        "shapes). Without options: export it to ONNX with its dataset into the cache (seconds) and print where it "
        "is. --rebuild trains it again from scratch (15-20 minutes on 2 cores) and compares the metrics with the "
        "record of the shipped one.",
    )
    p.add_argument("--rebuild", action="store_true", help="train again and compare the metrics with the record")
    p.add_argument("--write", action="store_true",
                   help="with --rebuild: replace the shipped checkpoint and record (a source checkout)")
    p.add_argument("--cache-dir", help="cache folder (default $EDGE_SSD_CACHE or ~/.cache/edge-ssd)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..errors import UserError
    from ..train import testmodel

    if args.write and not args.rebuild:
        raise UserError("--write replaces the shipped checkpoint with a retrained one; use it with --rebuild")
    if not args.rebuild:
        tm = testmodel.get_test_model(cache_dir=args.cache_dir)
        print(json.dumps(tm.to_json(), indent=1))
        return 0
    new, cmp = testmodel.rebuild(cache_dir=args.cache_dir, write=args.write)
    print(f"retrained in {new.train_seconds:.0f} s (torch {new.torch}); training code hash {new.code_hash}")
    if cmp is None:
        print("no record to compare with")
    else:
        print("\n".join(cmp.lines()))
        print("metrics match the record" if cmp.ok else
              f"metrics differ from the record by more than {testmodel.METRIC_TOLERANCE}")
    if args.write:
        print(f"shipped files replaced in {testmodel.ASSETS}; commit them")
    return 0 if cmp is None or cmp.ok else 1
