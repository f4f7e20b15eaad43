"""Command line: ``python -m poselab {reproduce,bench,book,list}``.

Examples::

    python -m poselab reproduce data --profile fast --device auto --seed 0 --out results.json
    python -m poselab bench
    python -m poselab book --profile book
"""

from __future__ import annotations

import argparse
import json
import sys

from poselab.checks import PROFILES


def _parser() -> argparse.ArgumentParser:
    from poselab.experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="python -m poselab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run one experiment and print its claims table")
    rep.add_argument("experiment", choices=sorted(EXPERIMENTS), help="experiment (one per chapter)")
    rep.add_argument("--profile", choices=PROFILES, default="book")
    rep.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--out", default=None, help="write the results as JSON to this file")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.add_argument("--checkpoint-dir", default=None,
                     help="checkpoint training every epoch into this folder; a rerun resumes from it")

    bench = sub.add_parser("bench", help="print performance ratios as JSON")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--repeats", type=int, default=5)

    book = sub.add_parser("book", help="execute every chapter and render the HTML book")
    book.add_argument("--profile", choices=PROFILES, default="book")
    book.add_argument("--device", default="auto")
    book.add_argument("--seed", type=int, default=0)
    book.add_argument("--refresh-references", action="store_true",
                      help="instead, re-execute the chapters at 'fast' into tests/nbval/ (nbval references)")

    sub.add_parser("list", help="list the experiments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reproduce":
        from poselab.experiments import run_experiment

        results = run_experiment(args.experiment, profile=args.profile, device=args.device, seed=args.seed,
                                 progress=not args.quiet, checkpoint_dir=args.checkpoint_dir)
        if args.out:
            results.save(args.out)
        print(results.summary())
        if args.out:
            print(f"results written to {args.out}")
    elif args.command == "bench":
        from poselab.bench import run_benchmarks

        print(json.dumps(run_benchmarks(device=args.device, repeats=args.repeats), indent=2))
    elif args.command == "book":
        from poselab import book

        if args.refresh_references:
            for path in book.refresh_references():
                print(f"reference written: {path}")
        else:
            index = book.build_book(profile=args.profile, device=args.device, seed=args.seed)
            print(f"Book rendered: {index}")
    elif args.command == "list":
        from poselab.experiments import EXPERIMENTS

        for name, module in EXPERIMENTS.items():
            print(f"{name:12s} {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
