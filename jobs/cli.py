"""The ``homerank`` command line.

    homerank generate --out DIR            synthetic behaviour log (events/ + items.parquet)
    homerank etl      --input PATH --out RUN   ingest, validate, weight, k-core, encode, split
    homerank graph    --out RUN            bipartite graph + normalisation + statistics
    homerank train    --out RUN            LightGCN (PyG) with early stopping and checkpoints
    homerank evaluate --out RUN            full-ranking test metrics vs the popularity baseline
    homerank rank     --out RUN            top-K rankings per user (rankings/)
    homerank homepage --out RUN            homepage sections per user (homepage/, homepage.jsonl)
    homerank preview  --out RUN --user U [--html FILE]   one user's homepage as static HTML
    homerank simulate-feedback --run RUN --out DIR   simulated shoppers' clicks on RUN's homepage (a log)
    homerank run      --input PATH --out RUN   all of the above (--input repeatable; --warm-start PREVIOUS_RUN)
    homerank demo                          generate + run into runs/demo/
    homerank --version                     prints ``homerank <version>``

``--out`` is always the run directory (for ``generate``, the directory the log is written to). Every stage,
``run`` and ``demo`` take ``--config FILE`` or ``--config preset:NAME`` (a preset shipped in
``homerank/presets/``; ``homerank --help`` lists them) and repeatable ``--set section.key=value`` overrides,
validated like the YAML and applied after ``--config``, ``--device``, ``--seed`` and ``--input-format``. A single
stage given any of these writes the resolved config to RUN/config.yaml, so the next stages see it.
``preview --run RUN`` is a deprecated alias of ``preview --out RUN``.

User mistakes exit with status 2 and a one-line message; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from homerank.engine.errors import DISK_FULL, HomerankError
from homerank.jobs.hygiene import LOG_FORMAT, quiet_library_warnings, quiet_noisy_loggers
from homerank.jobs.lock import run_lock
from homerank.jobs.rundir import RunDir

log = logging.getLogger("homerank")

DEMO_OUT = "runs/demo"
DEMO_SEARCH_SHARE = 0.15  # the demo's log: about one session in seven starts with a search


def _add_common(parser: argparse.ArgumentParser, needs_input: bool = False) -> None:
    if needs_input:
        parser.add_argument("--input", required=True, action="append", metavar="PATH",
                            help="behaviour log: Parquet/CSV file, directory or glob; repeat it to read several logs "
                                 "as one (e.g. the last log and the feedback on its homepage)")
        parser.add_argument("--input-format", choices=["auto", "parquet", "csv", "lightgcn"],
                            help="override ingest.format (lightgcn: folder with train.txt/test.txt[/valid.txt])")
    parser.add_argument("--out", required=True, help="run directory (created if missing)")
    parser.add_argument("--config", help="YAML config or preset:NAME (default: RUN/config.yaml if present, else "
                                         "built-in)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], help="compute backend (default: config)")
    parser.add_argument("--seed", type=int, help="random seed (default: config)")
    parser.add_argument("--warm-start", metavar="PREVIOUS_RUN",
                        help="an incremental run: extend PREVIOUS_RUN's id maps and start training from its "
                             "embeddings (sets warm_start.previous_run)")
    _add_set(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", dest="set_options", metavar="SECTION.KEY=VALUE",
                        help="override one config key, validated like the YAML (value read as YAML; repeatable; "
                             "applied after --config, --device, --seed and --input-format)")


def _epilog() -> str:
    from homerank.jobs.config import PRESET_PREFIX, list_presets

    presets = list_presets()
    width = max((len(PRESET_PREFIX + name) for name in presets), default=0)
    lines = [f"  {PRESET_PREFIX + name:<{width}}  {summary}" for name, summary in presets.items()]
    return (
        "Each stage reads the previous stage's artifacts from the run directory (--out), so any stage can be rerun\n"
        "alone. Override any config key with --set section.key=value (repeatable). See README.md for the config\n"
        "and the run directory layout.\n\n"
        f"presets shipped with homerank (--config {PRESET_PREFIX}NAME):\n" + "\n".join(lines)
    )


def build_parser() -> argparse.ArgumentParser:
    from homerank import __version__

    parser = argparse.ArgumentParser(
        prog="homerank",
        description="Behaviour logs -> user-item graph -> LightGCN -> personalised homepage rankings.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"homerank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="write a synthetic e-commerce behaviour log (the embedded default)",
                         description="Deterministic synthetic log: events/ (one Parquet file per partition, written in "
                                     "parallel by dask workers) and items.parquet (catalogue). The same seed and sizes "
                                     "give the same files whatever the number of workers.")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--users", type=int, default=20_000)
    gen.add_argument("--items", type=int, default=10_000)
    gen.add_argument("--events", type=int, default=1_000_000, help="approximate number of events")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--dirty-fraction", type=float, default=0.0005, help="share of invalid rows to inject")
    gen.add_argument("--duplicate-fraction", type=float, default=0.002, help="share of exact duplicates")
    gen.add_argument("--search-share", type=float, default=0.0,
                     help="probability that a session starts with a search event (event_type search, a query "
                          "column whose words are the titles' taste words); 0 (default): no searches, no query "
                          f"column; the demo uses {DEMO_SEARCH_SHARE}")
    gen.add_argument("--partition-events", type=int, default=1_000_000,
                     help="at most this many events per partition (one Parquet file, one task; bounds the memory "
                          "of a worker)")
    gen.add_argument("--users-per-partition", type=int, default=2_500, help="at most this many users per partition")
    gen.add_argument("--workers", type=int, help="local dask worker processes (default: the cores, at most one per "
                                                 "partition); the files do not depend on it")
    gen.add_argument("--scheduler", metavar="ADDRESS",
                     help="run the partitions on this dask scheduler (tcp://host:8786) instead of a local cluster; "
                          "its workers must see --out")
    gen.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")

    _add_common(sub.add_parser("etl", help="ingest, validate, weight, k-core, encode and split a log",
                               description="Reads the log through dask; bad rows go to RUN/quarantine/."),
                needs_input=True)
    _add_common(sub.add_parser("graph", help="build the normalised bipartite graph from RUN's ETL output"))
    train = sub.add_parser("train", help="train LightGCN (PyG) on RUN's graph")
    _add_common(train)
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoints/epoch_*.pt (same seed and config)")
    _add_common(sub.add_parser("evaluate", help="full-ranking metrics of the model and the popularity baseline"))
    _add_common(sub.add_parser("rank", help="write top-K rankings per user to RUN/rankings/"))
    _add_common(sub.add_parser("homepage", help="build each user's homepage sections (RUN/homepage/)"))
    run_parser = sub.add_parser("run", help="the whole pipeline: etl, graph, train, evaluate, rank")
    _add_common(run_parser, needs_input=True)
    run_parser.add_argument("--resume", action="store_true",
                            help="skip stages whose inputs and config are unchanged (fingerprints in "
                                 "logs/stages.json) and continue an interrupted training from its checkpoints")

    simulate = sub.add_parser(
        "simulate-feedback", help="simulated shoppers react to RUN's homepage: a log of clicks, carts, purchases",
        description="Reads RUN/impressions/ and the generated catalogue's latent tastes; writes OUT/events/ (the "
                    "log's columns plus section, row, slot, run_id) and OUT/summary.json. Feed OUT/events to the next "
                    "run: homerank run --input LOG --input OUT/events --warm-start RUN --out RUN2")
    simulate.add_argument("--run", required=True, help="run directory whose homepage was served (impressions/)")
    simulate.add_argument("--out", required=True, help="output directory of the feedback log")
    simulate.add_argument("--seed", type=int, default=42, help="random seed of the reactions (default 42)")
    simulate.add_argument("--catalogue", help="the generated log's items.parquet (default: the run's "
                                              "ingest.catalogue)")
    simulate.add_argument("--quiet", action="store_true", help="warnings only")

    preview = sub.add_parser("preview", help="render one user's homepage as a static HTML page",
                             usage="homerank preview --out RUN --user USER [--html FILE]",
                             description="Rows of cards (title, category, price, reason) from RUN/homepage/.")
    # --out is checked in _preview, not by argparse: the deprecated --run may stand in for it
    preview.add_argument("--out", metavar="RUN", help="run directory with homepage/ (required)")
    preview.add_argument("--user", required=True, help="user id as in the input log")
    preview.add_argument("--html", metavar="FILE", help="HTML file (default: RUN/preview/USER.html)")
    preview.add_argument("--run", dest="legacy_run", help=argparse.SUPPRESS)  # deprecated: --out RUN

    demo = sub.add_parser("demo", help="generate the synthetic log and run the whole pipeline on it",
                          description="Writes the input to INPUT (default runs/demo/input) and the run to OUT "
                                      "(default runs/demo).")
    demo.add_argument("--out", default=DEMO_OUT, help="run directory (default: runs/demo)")
    demo.add_argument("--input", help="where to generate the log (default: OUT/input)")
    demo.add_argument("--config", help="YAML config or preset:NAME (default: built-in)")
    demo.add_argument("--device", choices=["auto", "cpu", "gpu"])
    demo.add_argument("--seed", type=int)
    _add_set(demo)
    demo.add_argument("--quiet", action="store_true")
    return parser


def _setup_logging(run_root: Path | None, quiet: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    console = RichHandler(level=logging.WARNING if quiet else logging.INFO, show_path=False,
                          rich_tracebacks=False, console=None)
    root.addHandler(console)
    if run_root is not None:
        log_file = RunDir(run_root).log_file
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise HomerankError(f"{log_file}: cannot write the run's log ({exc.strerror}); check --out") from None
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    quiet_noisy_loggers()


def _check_out(path: Path) -> None:
    """``--out`` must be a directory this process can write (created when missing), or a one-line error."""
    if path.exists() and not path.is_dir():
        raise HomerankError(f"--out {path}: is a file, not a directory; give a directory (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HomerankError(f"--out {path}: cannot create this directory ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise HomerankError(f"--out {path}: the directory is read-only for this user; give another --out or make "
                            "it writable")


def _resolve_config(args: argparse.Namespace, run_root: Path | None):
    from homerank.jobs.config import apply_dotted, load_config, parse_set_option, with_overrides

    path = args.config
    if path is None and run_root is not None and RunDir(run_root).config.exists():
        path = RunDir(run_root).config
    elif path is None and getattr(args, "warm_start", None) and RunDir(Path(args.warm_start)).config.is_file():
        path = RunDir(Path(args.warm_start)).config  # an incremental run goes on with the previous run's settings
    config = with_overrides(load_config(path), device=args.device, seed=args.seed)
    dotted: dict[str, object] = {}
    if getattr(args, "input_format", None):
        dotted["ingest.format"] = args.input_format
    if getattr(args, "warm_start", None):
        dotted["warm_start.previous_run"] = args.warm_start
    if getattr(args, "set_options", None):  # last, so --set wins over the flags above (a repeated key: the last)
        dotted.update(parse_set_option(text) for text in args.set_options)
    if dotted:  # validated once, like the YAML, so a combination of options that cannot work is refused here
        source = "--set" if getattr(args, "set_options", None) else (
            "--input-format" if getattr(args, "input_format", None) else "--warm-start")
        config = apply_dotted(config, dotted, source=source)
    return config


def _generate(args: argparse.Namespace) -> None:
    import math

    from homerank.engine.synthetic import SyntheticSpec, generate
    from homerank.jobs.config import SEED_LIMIT

    for name in ("users", "items", "events", "partition_events", "users_per_partition"):
        if getattr(args, name) < 1:
            raise HomerankError(f"--{name.replace('_', '-')} must be positive")
    if args.workers is not None and args.workers < 1:
        raise HomerankError("--workers must be positive")
    if not 0 <= args.seed < SEED_LIMIT:
        raise HomerankError(f"--seed must be in [0, 2**32) (got {args.seed})")
    if not 0 <= args.search_share <= 1:
        raise HomerankError(f"--search-share must be in [0, 1] (got {args.search_share})")
    spec = SyntheticSpec(users=args.users, items=args.items, events=args.events, seed=args.seed,
                         dirty_fraction=args.dirty_fraction, duplicate_fraction=args.duplicate_fraction,
                         partition_events=args.partition_events, users_per_partition=args.users_per_partition,
                         search_share=args.search_share)
    workers = args.workers
    if workers is None and not args.scheduler:  # more local workers than partitions would only cost start-up
        partitions = max(math.ceil(spec.users / spec.users_per_partition),
                         math.ceil(spec.events / spec.partition_events))
        workers = max(1, min(os.cpu_count() or 1, partitions))
    summary = generate(args.out, spec, scheduler=args.scheduler, workers=workers, processes=True,
                       show_progress=not args.quiet)
    print(f"wrote {summary['events']} events in {summary['partitions']} partitions to {Path(args.out) / 'events'} "
          f"and the catalogue to {Path(args.out) / 'items.parquet'} ({summary['seconds']:.1f} s, "
          f"{summary['events_per_second']:,} events/s)")


def _demo(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.out)).ensure()
    with run_lock(run):
        _demo_locked(args, run)


def _demo_locked(args: argparse.Namespace, run: RunDir) -> None:
    from homerank.engine.backend import resolve_backend
    from homerank.engine.synthetic import SyntheticSpec, generate
    from homerank.jobs.pipeline import run_pipeline

    input_dir = Path(args.input) if args.input else run.input_dir
    config = _resolve_config(argparse.Namespace(**{**vars(args), "config": args.config}), None)
    if config.ingest.catalogue is None:
        config = config.model_copy(update={"ingest": config.ingest.model_copy(
            update={"catalogue": str(input_dir / "items.parquet")})})
    if not (input_dir / "events").exists() or not (input_dir / "items.parquet").exists():
        log.info("demo: generating the synthetic log into %s", input_dir)
        generate(input_dir, SyntheticSpec(seed=config.seed, search_share=DEMO_SEARCH_SHARE))
    backend = resolve_backend(config.device)
    metrics = run_pipeline(str(input_dir / "events"), run, config, backend, show_progress=not args.quiet)
    _print_summary(run, metrics)


def _print_summary(run, metrics) -> None:
    test, pop = metrics["test"], metrics["baselines"]["popularity"]
    ks = sorted(int(key.split("@")[1]) for key in test if key.startswith("recall@"))
    k = 20 if 20 in ks else ks[-1]  # evaluate.ks decides which cut-offs exist
    print(f"\nhomerank: run finished in {run.root}")
    print(f"  test recall@{k} {test[f'recall@{k}']:.4f} (popularity {pop[f'recall@{k}']:.4f}), "
          f"ndcg@{k} {test[f'ndcg@{k}']:.4f} (popularity {pop[f'ndcg@{k}']:.4f}), device {metrics['device']}")
    print(f"  rankings: {run.rankings}/   metrics: {run.metrics}   report: {run.report}")
    if run.homepage.exists():
        print(f"  homepage: {run.homepage}/ and {run.homepage_jsonl}")


def _stage(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.out)).ensure()
    with run_lock(run):  # the whole job, config included: a second job on RUN exits 2 naming this one
        _stage_locked(args, run)


def _stage_locked(args: argparse.Namespace, run: RunDir) -> None:
    config = _resolve_config(args, run.root)
    inputs = getattr(args, "input", None)
    input_path = inputs[0] if inputs and len(inputs) == 1 else inputs  # one log: its path, as before
    if args.command in ("etl", "run") and config.ingest.format != "lightgcn":
        from homerank.jobs.cluster import start_workers_early

        start_workers_early(config.cluster, config.device, input_path, config.ingest.format)  # before the imports
    from homerank.engine.backend import resolve_backend
    from homerank.jobs.pipeline import run_pipeline, run_stage, write_resolved_config

    backend = resolve_backend(config.device)
    if args.command == "run":
        metrics = run_pipeline(input_path, run, config, backend, show_progress=not args.quiet, resume=args.resume)
        _print_summary(run, metrics)
        return
    if (args.command == "etl" or args.config or args.device or args.seed is not None or args.set_options
            or args.warm_start):
        write_resolved_config(run, config)
    run_stage(args.command, run, config, backend, input_path, show_progress=not args.quiet,
              resume=getattr(args, "resume", False))
    print(f"homerank {args.command}: done ({run.root})")


def _preview(args: argparse.Namespace) -> None:
    from homerank.jobs.preview import write_preview

    run, html = args.out, args.html
    if args.legacy_run is not None:  # the old flags: --run RUN [--out FILE.html]
        if args.out is not None and args.html is not None:
            raise HomerankError("preview: --run is a deprecated alias of --out; give --out RUN --html FILE")
        log.warning("preview: --run is deprecated; use --out RUN (the run directory) and --html FILE")
        run, html = args.legacy_run, args.html or args.out
    if run is None:
        raise HomerankError("preview: --out RUN is required (the run directory with homepage/)")
    out = Path(html) if html else RunDir(Path(run)).preview(args.user)
    print(f"wrote {write_preview(RunDir(Path(run)), args.user, out)}")


def _simulate_feedback(args: argparse.Namespace) -> None:
    from homerank.jobs.config import SEED_LIMIT
    from homerank.jobs.simulate import simulate_feedback

    if not 0 <= args.seed < SEED_LIMIT:
        raise HomerankError(f"--seed must be in [0, 2**32) (got {args.seed})")
    summary = simulate_feedback(RunDir(Path(args.run)), Path(args.out), args.seed, args.catalogue)
    print(f"wrote {summary['events']} events ({summary['click']} clicks, {summary['cart']} carts, "
          f"{summary['purchase']} purchases) on {summary['impressions']} impressions of {summary['users']} users "
          f"(click-through {summary['ctr']:.4f}) to {Path(args.out) / 'events'}")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``homerank`` command. Called from Python, it leaves the root logger as it found it (its console and run
    log handlers are removed and closed on return), so a later call's records do not land in this run's log."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return _main(argv)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    run_root = Path(args.out) if args.command not in ("generate", "preview", "simulate-feedback") else None
    try:
        if args.command != "preview":  # preview reads --out; every other command writes there
            _check_out(Path(args.out))
        _setup_logging(run_root if run_root is not None and args.command != "generate" else None,
                       getattr(args, "quiet", False))
        if args.command == "generate":
            _generate(args)
        elif args.command == "simulate-feedback":
            _simulate_feedback(args)
        elif args.command == "preview":
            _preview(args)
        elif args.command == "demo":
            _demo(args)
        else:
            _stage(args)
    except HomerankError as exc:
        print(f"homerank: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk anywhere in the job (e.g. a dask worker's spill) is one line, not a traceback
        if exc.errno not in DISK_FULL:
            raise
        error = HomerankError(
            f"{getattr(args, 'out', '.')}: `homerank {args.command}` stopped: {os.strerror(exc.errno)} while "
            "writing the run directory or dask's spill directory (cluster.local_directory, default the system temp "
            "folder); free some space or point them at a larger disk, then rerun (a stage publishes its outputs "
            "only when it completes)")
        logging.getLogger(__name__).error("%s", error.message)
        print(f"homerank: error: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("homerank: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
