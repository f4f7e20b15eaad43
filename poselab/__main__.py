"""Command line: ``python -m poselab {reproduce,bench,book,list}``.

Examples::

    python -m poselab reproduce data --profile fast --device auto --seed 0 --out results.json
    python -m poselab reproduce seal --profile full --checkpoint-dir ckpt   # rerun to resume
    python -m poselab bench
    python -m poselab book --profile book

Errors in what was asked (an argument, a file, a device) print one line
``poselab: error: ...`` on stderr and exit with status 2 (``--debug`` prints the
traceback instead); Ctrl-C exits with status 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import traceback
from pathlib import Path

from poselab.checks import PROFILES, SEED_LIMIT, check_choice, check_seed

EXIT_ERROR = 2
"""Exit status for an error in what was asked (as argparse uses for a bad argument)."""
EXIT_DIVERGED = 1
"""Exit status when training diverged (the arguments were valid; the run failed)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""

_REPORTED = (ValueError, TypeError, OSError)
"""What poselab raises for a bad argument, a bad or missing file, an unavailable device
(``BVHError`` and the checkpoint/tensor-file errors are ``ValueError``s). Printed as one line."""


def _seed_type(headroom: int):
    """An argparse ``type`` that accepts an int seed in ``[0, 2**32 - headroom)``."""
    def seed(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_LIMIT - 1 - headroom}, "
                                             f"got {text!r}") from None
        try:
            return check_seed(value, "--seed", headroom=headroom)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--seed: ")) from None
    seed.__name__ = "seed"  # argparse names the type in some messages
    return seed


def _parser() -> argparse.ArgumentParser:
    from poselab.experiments import EXPERIMENTS, SEED_HEADROOM

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback instead of one line")

    parser = argparse.ArgumentParser(prog="python -m poselab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", parents=[common], help="run one experiment and print its claims table")
    rep.add_argument("experiment", choices=sorted(EXPERIMENTS), help="experiment (one per chapter)")
    rep.add_argument("--profile", choices=PROFILES, default="book")
    rep.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'")
    rep.add_argument("--seed", type=_seed_type(SEED_HEADROOM), default=0,
                     help=f"an integer from 0 to {SEED_LIMIT - 1 - SEED_HEADROOM} (default 0)")
    rep.add_argument("--out", default=None,
                     help="write the results as JSON to this file (its folder must exist and be writable)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.add_argument("--checkpoint-dir", default=None,
                     help="checkpoint training every epoch into this folder; a rerun resumes from it")
    rep.add_argument("--fresh", action="store_true",
                     help="ignore checkpoints already in --checkpoint-dir and overwrite them (start over)")

    bench = sub.add_parser("bench", parents=[common], help="print performance ratios as JSON")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--repeats", type=int, default=5)

    book = sub.add_parser("book", parents=[common], help="execute every chapter and render the HTML book")
    book.add_argument("--profile", choices=PROFILES, default="book")
    book.add_argument("--device", default="auto")
    book.add_argument("--seed", type=_seed_type(SEED_HEADROOM), default=0)
    book.add_argument("--refresh-references", action="store_true",
                      help="instead, re-execute the chapters at 'fast' into tests/nbval/ (nbval references)")

    reg = sub.add_parser("regression", parents=[common],
                         help="check this machine's fast results against the references (or --refresh them)")
    reg.add_argument("experiments", nargs="*", metavar="experiment",
                     help=f"experiments (default: all of {', '.join(sorted(EXPERIMENTS))})")
    reg.add_argument("--refresh", action="store_true",
                     help="measure every experiment under each ATEN_CPU_CAPABILITY x thread setting this CPU has "
                          "and rewrite the references (tests/regression/)")
    reg.add_argument("--list-settings", action="store_true",
                     help="print the settings this CPU can run, as CAPABILITY:THREADS (for make test-kernels)")
    reg.add_argument("--jobs", type=int, default=1, help="with --refresh: runs at once (default 1)")
    reg.add_argument("--dir", default=None, help="folder of the references (default: tests/regression/ of the checkout)")

    sub.add_parser("list", parents=[common], help="list the experiments")
    return parser


def check_out_path(out: str) -> Path:
    """Validate ``--out`` before anything runs: not a folder, not a special file, in an existing
    folder where a file can be created (the JSON is written there through a temporary file).

    Raises ``ValueError`` with what to do instead.
    """
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out!r} is a folder; expected a file name, e.g. --out {path / 'results.json'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"--out {out!r} exists and is not a regular file; choose a file name, e.g. results.json")
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"--out {out!r}: folder {str(folder)!r} does not exist; create it first "
                         f"(mkdir -p {shlex.quote(str(folder))}) or choose another path")
    if not folder.is_dir():
        raise ValueError(f"--out {out!r}: {str(folder)!r} is a file, not a folder; choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".poselab-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out!r}: cannot create files in folder {str(folder)!r} "
                         f"({exc.strerror or exc}); choose a writable folder") from None
    return path


def _command(argv: list[str], *, drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    """The command line of this run as a user would type it, without ``drop`` and with ``add``."""
    return shlex.join(["python", "-m", "poselab", *[a for a in argv if a not in drop], *add])


def _interrupted_message(args: argparse.Namespace, argv: list[str]) -> str:
    """What Ctrl-C during ``reproduce`` leaves on disk and how to continue."""
    if args.checkpoint_dir is None:
        return ("poselab: interrupted; nothing was saved (no --checkpoint-dir was given). To make a run resumable, "
                "give it a checkpoint folder: training saves there at every record (an epoch, or a logged step) and the "
                f"same command run again continues from the last one: {_command(argv, drop=('--fresh',), add=('--checkpoint-dir', 'checkpoints'))}")
    return (f"poselab: interrupted; the training up to its last record is checkpointed in {args.checkpoint_dir!r}. "
            f"To resume, run the same command again with the same --checkpoint-dir (and without --fresh): "
            f"{_command(argv, drop=('--fresh',))}")


def _run(args: argparse.Namespace) -> int:
    from poselab.checks import resolve_device

    if args.command == "reproduce":
        from poselab.experiments import run_experiment

        out = check_out_path(args.out) if args.out else None
        resolve_device(args.device)  # an unusable device fails here, not after the data is built
        results = run_experiment(args.experiment, profile=args.profile, device=args.device, seed=args.seed,
                                 progress=not args.quiet, checkpoint_dir=args.checkpoint_dir, resume=not args.fresh)
        print(results.summary(), flush=True)  # shown even if saving fails
        if out is not None:
            results.save(out)
            print(f"results written to {out}")
    elif args.command == "bench":
        from poselab.bench import run_benchmarks

        resolve_device(args.device)
        print(json.dumps(run_benchmarks(device=args.device, repeats=args.repeats), indent=2))
    elif args.command == "book":
        from poselab import book

        if args.refresh_references:
            for path in book.refresh_references():
                print(f"reference written: {path}")
        else:
            resolve_device(args.device)
            index = book.build_book(profile=args.profile, device=args.device, seed=args.seed)
            print(f"Book rendered: {index}")
    elif args.command == "regression":
        return _regression(args)
    elif args.command == "list":
        from poselab.experiments import EXPERIMENTS

        for name, module in EXPERIMENTS.items():
            print(f"{name:12s} {module}")
    return 0


def _regression(args: argparse.Namespace) -> int:
    """``regression``: compare runs here with the references, or measure and rewrite them."""
    from poselab import regression
    from poselab.experiments import EXPERIMENTS, run_experiment

    names = list(dict.fromkeys(args.experiments)) or sorted(EXPERIMENTS)
    for name in names:
        check_choice("experiment", name, tuple(sorted(EXPERIMENTS)))
    if args.jobs < 1:
        raise ValueError(f"--jobs: expected an int >= 1, got {args.jobs}")
    if args.list_settings:
        print(" ".join(f"{cap}:{threads}" for cap, threads in regression.available_settings()))
        return 0
    if args.refresh:
        settings = regression.available_settings()
        print(f"measuring {', '.join(names)} under {', '.join(map(regression.setting_name, settings))}", flush=True)
        regression.refresh(names, settings, args.dir, jobs=args.jobs, log=lambda line: print(line, flush=True))
        return 0
    failed = 0
    for name in names:
        reference = regression.load_reference(name, args.dir)
        doc = run_experiment(name, profile=regression.PROFILE, device="cpu", seed=regression.SEED,
                             progress=False).to_dict()
        problems = regression.compare(doc, reference)
        failed += bool(problems)
        print(f"{name}: {'outside the reference' if problems else 'within the reference'} "
              f"({len(reference['quantities'])} quantities)")
        for line in problems:
            print(f"  {line}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)  # a bad argument exits with status 2 and the usage
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        if args.command == "reproduce":
            print(_interrupted_message(args, argv), file=sys.stderr)
        else:
            print(f"poselab: interrupted; run the command again to start over: {_command(argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FloatingPointError as exc:  # training diverged (train_model stops before checkpointing it)
        if args.debug:
            raise
        print(f"poselab: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except _REPORTED as exc:
        if args.debug:
            raise
        print(f"poselab: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (an ``OSError`` without a message shows its type)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
