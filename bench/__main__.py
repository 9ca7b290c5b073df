"""homerank's benchmark suite (run from the repository root; see bench/README.md).

    python -m bench etl --events 1e6 --workers 2 [--json FILE] [--processes] [--repeat R] [--data DIR]
    python -m bench all [--sizes 1e5,1e6,1e7] [--workers 1,2] [--processes] [--out DIR] [--data DIR]
    python -m bench training --run RUN [--variant NAME:key=value,...] [--budget S] [--json FILE]
    python -m bench pipeline --events 1e6 --workers 2 [--json FILE] [--epochs E] [--steps-per-epoch S]
    python -m bench pipeline-scaling [--sizes 1e6,3e6,1e7] [--workers 2] [--out DIR] [--reuse]
    python -m bench graph --events 1e6 --workers 2 [--json FILE] [--repeat R] [--data DIR] [--networkx-budget S]
    python -m bench cold-start [--events 1e6] [--holdout 0.1] [--epochs E] [--features text,category,price]
                               [--id-dropout P] [--json FILE]
    python -m bench warm-start [--events 1e6] [--seed S] [--repeat R] [--data DIR] [--json FILE] [--set K=V ...]
                               [--reuse]
    python -m bench out-of-core [--events 1e8] [--workers 2] [--memory-limit 2GiB] [--json FILE] [--set K=V ...]
    python -m bench defaults [--events 1e6] [--json FILE] [--als-factors 32,64,128,256] [--als-alpha 1,10,40]
                             [--als-regularization 0.01,0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.cold_start_bench import DEFAULT_DATA as COLD_START_DATA
from bench.cold_start_bench import DEFAULT_JSON as COLD_START_JSON
from bench.cold_start_bench import run_cold_start_bench
from bench.etl_suite import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    check_edges,
    etl_point,
    parse_counts,
    result_name,
    run_all,
    say,
    write_point,
)
from bench.graph_bench import DEFAULT_OUT as GRAPH_OUT
from bench.graph_bench import NX_BUDGET_SECONDS, check_agreement, graph_point
from bench.graph_bench import result_name as graph_name
from bench.graph_bench import write_point as write_graph_point
from bench.pipeline_bench import (
    DEFAULT_EPOCHS,
    DEFAULT_PEER_USERS,
    DEFAULT_STEPS_PER_EPOCH,
    pipeline_point,
    run_scaling,
)
from bench.pipeline_bench import DEFAULT_OUT as PIPELINE_OUT
from bench.pipeline_bench import result_name as pipeline_name
from bench.pipeline_bench import write_point as write_pipeline_point
from bench.training_bench import DEFAULT_VARIANTS, parse_variant, run_training_bench
from bench.warm_start_bench import DEFAULT_DATA as WARM_START_DATA
from bench.warm_start_bench import DEFAULT_JSON as WARM_START_JSON
from bench.warm_start_bench import run_warm_start_bench


def _variant(text: str) -> tuple[str, dict]:
    try:
        return parse_variant(text)
    except Exception as exc:  # noqa: BLE001 - argparse turns it into a usage error
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    values = _counts(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"one number expected, got {text!r}")
    return values[0]


def _counts(text: str) -> list[int]:
    try:
        return parse_counts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_cluster_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--memory-limit`` a size, ``--workers`` and ``--partition-rows`` positive (out-of-core commands)."""
    from dask.utils import parse_bytes

    try:
        parse_bytes(args.memory_limit)
    except ValueError:
        parser.error(f"--memory-limit: not a size: {args.memory_limit!r}")
    if args.workers < 1 or args.partition_rows < 1:
        parser.error("--workers and --partition-rows must be >= 1")


def _common(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--threads", dest="processes", action="store_false",
                      help="homerank's dask workers are threads of one process (default; the product's choice "
                      "for logs that take up to 1 GiB in one process, ~4e6 events)")
    mode.add_argument("--processes", dest="processes", action="store_true",
                      help="homerank's dask workers are processes (result files get a -processes suffix)")
    parser.set_defaults(processes=False)
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                        help="threads per dask worker (default 1, so that --workers is the parallelism); 0 leaves "
                             "it to dask: cpu_count / workers, as `homerank etl --set cluster.n_workers=W` does")
    parser.add_argument("--repeat", type=int, default=None, metavar="R",
                        help="runs per engine, median reported (default: 3 up to 1e6 events, 1 above)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                        help=f"cache of generated logs, one folder per size (default {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where the JSON, Markdown and PNG results go (default {DEFAULT_OUT})")


def _pipeline_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"train.epochs (default {DEFAULT_EPOCHS}, whatever the size)")
    parser.add_argument("--steps-per-epoch", type=int, default=DEFAULT_STEPS_PER_EPOCH,
                        help=f"train.steps_per_epoch (default {DEFAULT_STEPS_PER_EPOCH}: batch = pairs / steps)")
    parser.add_argument("--peer-users", type=int, default=DEFAULT_PEER_USERS,
                        help=f"users the naive peer loops over (default {DEFAULT_PEER_USERS})")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="homerank --device")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                        help=f"cache of generated logs; runs go to DIR/pipeline/ (default {DEFAULT_DATA})")


def _pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.workers < 1 or args.epochs < 1 or args.steps_per_epoch < 1 or args.peer_users < 1:
        parser.error("--workers, --epochs, --steps-per-epoch and --peer-users must be >= 1")
    options = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "peer_users": args.peer_users,
               "device": args.device, "data_root": args.data}
    if args.command == "pipeline-scaling":
        run_scaling(args.sizes, args.workers, out=args.out, keep_run=args.keep_runs, reuse=args.reuse, **options)
        return 0
    path = args.json or PIPELINE_OUT / f"{pipeline_name(args.events, args.workers, args.processes)}.json"
    say(f"pipeline: {args.events} events, {args.workers} worker(s) -> {path}")
    result = pipeline_point(args.events, args.workers, keep_run=not args.remove_run, processes=args.processes,
                            **options)
    write_pipeline_point(result, path)
    say("pipeline: " + ", ".join(f"{stage} {m['seconds']:.1f}s" for stage, m in result["stages"].items())
        + f"; rank {result['rank_users_per_s']:.0f} users/s (peer {result['peer']['rank_users_per_s']:.0f}), "
          f"homepage {result['homepage_users_per_s']:.0f} users/s (peer {result['peer']['homepage_users_per_s']:.0f})")
    return 0


def _graph(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.workers < 1 or (args.repeat is not None and args.repeat < 1) or args.networkx_budget <= 0:
        parser.error("--workers and --repeat must be >= 1, --networkx-budget > 0")
    path = args.json or GRAPH_OUT / f"{graph_name(args.events, args.workers)}.json"
    say(f"graph: {args.events} events, {args.workers} worker(s) for the ETL -> {path}")
    result = graph_point(args.events, args.workers, repeat=args.repeat, data_root=args.data,
                         networkx_budget=args.networkx_budget)
    check_agreement(result, path)
    write_graph_point(result, path)
    nx_speedup = result["speedup_vs_networkx"]
    say("graph: " + ", ".join(f"{engine} {'skipped' if s is None else f'{s:.2f}s'}"
                              for engine, s in result["seconds"].items())
        + f"; {result['edges']} edges, {result['components']} component(s); homerank speedup vs scipy "
          f"{result['speedup_vs_scipy']:.2f}, vs networkx {'n/a' if nx_speedup is None else f'{nx_speedup:.2f}'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    etl = commands.add_parser("etl", help="one point: homerank's ETL stage vs pandas and polars on one log",
                              description="homerank's ETL stage vs pandas and polars on the same generated log, "
                                          "each engine in its own subprocess")
    etl.add_argument("--events", type=_count, default=1_000_000, help="log size, e.g. 1e6 (default)")
    etl.add_argument("--workers", type=int, default=1, help="homerank's dask workers (default 1)")
    etl.add_argument("--json", type=Path, metavar="FILE",
                     help="result file (default OUT/events-N-workers-W.json); a .md table is written next to it")
    _common(etl)
    strong = commands.add_parser("etl-strong", help="strong scaling: homerank's ETL with 1, 2, 4, ... workers on one "
                                 "log, and the installed peers once",
                                 description="the ETL stage on one generated log with each worker count, each in "
                                             "its own process, and pandas/polars when installed (bench/etl_strong.py)")
    strong.add_argument("--events", type=_count, default=10_000_000, help="log size (default 1e7)")
    strong.add_argument("--workers", type=_counts, default=[1, 2], help="comma-separated worker counts (default 1,2)")
    strong.add_argument("--json", type=Path, metavar="FILE", help="result file (default "
                        "OUT/strong-events-N-CPUSCPU[-processes].json); a .md table is written next to it")
    _common(strong)
    every = commands.add_parser("all", help="every size x worker count, then scaling.json/.md and plots",
                                description="`etl` for every size and worker count, then the scaling summary "
                                            "(exponent of time vs events, strong scaling) and PNG plots")
    every.add_argument("--sizes", type=_counts, default=[100_000, 1_000_000, 10_000_000],
                       help="comma-separated log sizes (default 1e5,1e6,1e7)")
    every.add_argument("--workers", type=_counts, default=[1, 2], help="comma-separated worker counts (default 1,2)")
    _common(every)
    training = commands.add_parser("training", help="training schedules side by side on one run's graph",
                                   description="epoch seconds and validation NDCG@20 per training variant "
                                               "(bench/training_bench.py)")
    training.add_argument("--run", type=Path, required=True, help="run directory with etl and graph done")
    training.add_argument("--variant", action="append", type=_variant, metavar="NAME:key=value,...",
                          help="train.* overrides of one variant (repeatable; the first is the reference); "
                               "default: today's schedule and three large-batch ones")
    training.add_argument("--budget", type=float, default=600.0, help="training seconds per variant (600)")
    training.add_argument("--json", type=Path, metavar="FILE", help="result file (default "
                          "bench/results/training/<run folder name>.json)")
    pipeline = commands.add_parser("pipeline", help="every stage as its own homerank process: seconds, peak RSS, "
                                   "users/s of rank and homepage vs a naive per-user loop",
                                   description="etl, graph, train, evaluate, rank and homepage on one generated log "
                                               "(bench/pipeline_bench.py)")
    pipeline.add_argument("--events", type=_count, default=1_000_000, help="log size, e.g. 1e6 (default)")
    pipeline.add_argument("--workers", type=int, default=1, help="cluster.n_workers (default 1)")
    pipeline.add_argument("--json", type=Path, metavar="FILE", help="result file (default "
                          "bench/results/pipeline/events-N-workers-W.json); a .md table is written next to it")
    pipeline.add_argument("--remove-run", action="store_true", help="remove the run directory afterwards")
    pipeline.add_argument("--processes", action="store_true", help="the ETL on --workers single-threaded worker "
                          "processes (default: one worker process-less, --workers threads); the result file gets "
                          "a -processes suffix")
    _pipeline_common(pipeline)
    scaling = commands.add_parser("pipeline-scaling", help="`pipeline` for several sizes, then per-stage exponents "
                                  "and a plot", description="`pipeline` for every size, then scaling.json/.md and "
                                  "time_vs_events.png (bench/pipeline_bench.py)")
    scaling.add_argument("--sizes", type=_counts, default=[1_000_000, 3_000_000, 10_000_000],
                         help="comma-separated log sizes (default 1e6,3e6,1e7)")
    scaling.add_argument("--workers", type=int, default=2, help="cluster.n_workers (default 2)")
    scaling.add_argument("--out", type=Path, default=PIPELINE_OUT, metavar="DIR",
                         help=f"where the results go (default {PIPELINE_OUT})")
    scaling.add_argument("--keep-runs", action="store_true", help="keep every point's run directory")
    scaling.add_argument("--reuse", action="store_true", help="read a point back from OUT/events-N-workers-W.json "
                         "where it exists instead of running it again")
    _pipeline_common(scaling)
    graph = commands.add_parser("graph", help="homerank's graph stage vs scipy.sparse and networkx on the same "
                                "training edges", description="the cached log, homerank's etl once (cached, not "
                                "timed), then homerank's graph stage, scipy.sparse and networkx each in its own "
                                "subprocess (bench/graph_bench.py)")
    graph.add_argument("--events", type=_count, default=1_000_000, help="log size, e.g. 1e6 (default)")
    graph.add_argument("--workers", type=int, default=2, help="cluster.n_workers of the (untimed) ETL run that "
                       "makes the training edges (default 2); the graph stage starts no cluster")
    graph.add_argument("--json", type=Path, metavar="FILE", help="result file (default "
                       "bench/results/graph/events-N-workers-W.json); a .md table is written next to it")
    graph.add_argument("--repeat", type=int, default=None, metavar="R",
                       help="runs per engine, median reported (default: 3 up to 1e6 events, 1 above)")
    graph.add_argument("--networkx-budget", type=float, default=NX_BUDGET_SECONDS, metavar="S",
                       help=f"skip networkx when its estimated seconds per run exceed S (default "
                            f"{NX_BUDGET_SECONDS:.0f}) or its estimated memory half of what is available")
    graph.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                       help=f"cache of generated logs; the ETL runs go to DIR/graph/ (default {DEFAULT_DATA})")
    cold = commands.add_parser("cold-start", help="Recall@20 on items held out of training: homerank with content "
                               "features vs popularity within category, random and the category/price-band mean "
                               "vector", description="bench/cold_start_bench.py (protocol in its docstring and "
                               "bench/README.md)")
    cold.add_argument("--events", type=_count, default=1_000_000, help="generated log size (default 1e6)")
    cold.add_argument("--users", type=_count, default=None, help="generated users (default events / 50)")
    cold.add_argument("--items", type=_count, default=None, help="catalogue items (default events / 100)")
    cold.add_argument("--holdout", type=float, default=0.1, help="share of the items with events held out (0.1)")
    cold.add_argument("--epochs", type=int, default=15, help="train.epochs of both models (15; early stopping on)")
    cold.add_argument("--features", default="text,category,price",
                      help="train.content.features of ours, comma-separated (default text,category,price)")
    cold.add_argument("--id-dropout", type=float, default=0.0, help="train.content.id_dropout of ours (0)")
    cold.add_argument("--text-encoder", default="wordllama_l2_supercat",
                      choices=("wordllama_l2_supercat", "hashed_tfidf"), help="train.content.text_encoder")
    cold.add_argument("--text-dim", type=int, default=64, help="train.content.text_dim (64)")
    cold.add_argument("--seed", type=int, default=0, help="seed of the hold-out, the training and the random "
                      "baseline (the log's generator seed stays 42)")
    cold.add_argument("--data", type=Path, default=COLD_START_DATA, metavar="DIR",
                      help=f"generated log, warm log and run directory (default {COLD_START_DATA})")
    cold.add_argument("--json", type=Path, default=COLD_START_JSON, metavar="FILE",
                      help=f"result file (default {COLD_START_JSON}); a .md table is written next to it")
    warm = commands.add_parser("warm-start", help="the feedback loop: a warm-started incremental run against a cold "
                               "retrain on the same log + simulated feedback (seconds, test Recall/NDCG@20)",
                               description="bench/warm_start_bench.py (protocol in its docstring and bench/README.md)")
    warm.add_argument("--events", type=_count, default=1_000_000, help="generated log size (default 1e6, the demo)")
    warm.add_argument("--users", type=_count, default=None, help="generated users (default events / 50)")
    warm.add_argument("--items", type=_count, default=None, help="catalogue items (default events / 100)")
    warm.add_argument("--seed", type=int, default=42, help="seed of the simulated shoppers (default 42)")
    warm.add_argument("--repeat", type=int, default=1, help="cold and warm runs, alternating; medians (default 1)")
    warm.add_argument("--set", action="append", dest="settings", default=[], metavar="SECTION.KEY=VALUE",
                      help="config override of every run (repeatable), e.g. warm_start.epochs=5")
    warm.add_argument("--reuse", action="store_true", help="read back the runs this bench finished before "
                      "(DIR/cold-N, DIR/warm-N with bench_run.json) instead of running them again")
    warm.add_argument("--data", type=Path, default=WARM_START_DATA, metavar="DIR",
                      help=f"log, served run, feedback and the runs (default {WARM_START_DATA})")
    warm.add_argument("--json", type=Path, default=WARM_START_JSON, metavar="FILE",
                      help=f"result file (default {WARM_START_JSON}); a .md table is written next to it")
    defaults = commands.add_parser("defaults", help="homerank's default training and the minute preset's vs an ALS "
                                   "tuned on validation, on one generated log and split (test Recall/NDCG@20, "
                                   "seconds)", description="bench/defaults_bench.py (protocol in its docstring and "
                                   "bench/README.md)")
    defaults.add_argument("--events", type=_count, default=1_000_000, help="generated log size (default 1e6)")
    defaults.add_argument("--json", type=Path, default=None, metavar="FILE",
                          help="result file (default bench/results/defaults/events-N.json); a .md beside it")
    defaults.add_argument("--als-factors", default="32,64,128,256", help="ALS grid: factors (comma-separated)")
    defaults.add_argument("--als-alpha", default="1,10,40", help="ALS grid: confidence weights alpha")
    defaults.add_argument("--als-regularization", default="0.01,0.1", help="ALS grid: regularization")
    defaults.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                          help=f"cache of generated logs; the runs go to DIR/defaults/ (default {DEFAULT_DATA})")
    ooc = commands.add_parser("out-of-core", help="homerank's ETL on a log larger than its workers' total memory "
                              "limit: worker processes capped at --memory-limit, spilling to disk; per-worker memory "
                              "sampled", description="bench/out_of_core.py (what it samples in its docstring)")
    ooc.add_argument("--events", type=_count, default=100_000_000, help="log size (default 1e8)")
    ooc.add_argument("--workers", type=int, default=2, help="worker processes, one thread each (default 2)")
    ooc.add_argument("--memory-limit", default="2GiB", help="memory limit per worker (default 2GiB)")
    ooc.add_argument("--partition-rows", type=int, default=500_000, help="ingest.partition_rows (default 500000)")
    ooc.add_argument("--memory-target", type=float, default=None, help="share of the limit a worker fills with data "
                     "before spilling (distributed.worker.memory.target; dask's default 0.6)")
    ooc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                     help="more `homerank etl --set` overrides (repeatable)")
    ooc.add_argument("--json", type=Path, metavar="FILE",
                     help="result file (default bench/results/etl/out-of-core-events-N.json)")
    ooc.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                     help=f"cache of generated logs; the run and its spill go to DIR/out-of-core/ "
                          f"(default {DEFAULT_DATA})")
    oocs = commands.add_parser("out-of-core-scaling", help="`out-of-core` at several sizes with the same workers and "
                               "limit, and the fitted exponent of time vs events (whole stage and per phase)",
                               description="bench/out_of_core_scaling.py")
    oocs.add_argument("--events", type=_counts, default=[1_000_000, 10_000_000, 100_000_000, 300_000_000],
                      help="log sizes, comma-separated (default 1e6,1e7,1e8,3e8)")
    oocs.add_argument("--workers", type=int, default=2, help="worker processes, one thread each (default 2)")
    oocs.add_argument("--memory-limit", default="2GiB", help="memory limit per worker (default 2GiB)")
    oocs.add_argument("--partition-rows", type=int, default=500_000, help="ingest.partition_rows (default 500000)")
    oocs.add_argument("--reuse", action="store_true", help="take a size's out-of-core-events-N.json when it ran with "
                      "the same workers and limit and exited 0, instead of running it again")
    oocs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                      help="more `homerank etl --set` overrides (repeatable)")
    oocs.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="folder of the per-size JSON and the summary (default bench/results/etl)")
    oocs.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                      help=f"cache of generated logs (default {DEFAULT_DATA})")
    args = parser.parse_args(argv)
    if args.command in ("out-of-core", "out-of-core-scaling"):
        _check_cluster_args(parser, args)
    if args.command == "out-of-core-scaling":
        from bench.out_of_core import DEFAULT_OUT as OOC_OUT
        from bench.out_of_core_scaling import run_scaling

        summary = run_scaling(sorted(set(args.events)), args.workers, args.memory_limit, args.data,
                              args.out or OOC_OUT, args.reuse, args.partition_rows, tuple(args.settings))
        fit = summary["time_exponent"]
        say(f"out-of-core-scaling: exponent {fit['exponent']} over {fit['sizes']}")
        return 0 if all(r["exit_status"] == 0 for r in summary["runs"]) else 1
    if args.command == "out-of-core":
        from bench.out_of_core import DEFAULT_OUT as OOC_OUT
        from bench.out_of_core import run_out_of_core

        if args.memory_target is not None and not 0 < args.memory_target < 0.8:
            parser.error("--memory-target must be in (0, 0.8)")
        path = args.json or OOC_OUT / f"out-of-core-events-{args.events}.json"
        result = run_out_of_core(args.events, args.workers, args.memory_limit, args.data, args.data / "out-of-core",
                                 path, args.partition_rows, tuple(args.settings), args.memory_target)
        return 0 if result["exit_status"] == 0 else 1
    if args.command == "defaults":
        from bench.defaults_bench import run_defaults_bench

        def numbers(text: str, kind: type) -> tuple:
            try:
                values = tuple(kind(v) for v in text.split(",") if v.strip())
            except ValueError:
                parser.error(f"not a comma-separated list of {kind.__name__}: {text!r}")
            if not values or min(values) <= 0:
                parser.error(f"expected positive values: {text!r}")
            return values

        result = run_defaults_bench(args.events, json_path=args.json, data=args.data,
                                    als_factors=numbers(args.als_factors, int),
                                    als_alpha=numbers(args.als_alpha, float),
                                    als_regularization=numbers(args.als_regularization, float))
        say("defaults: test ndcg@20 " + ", ".join(f"{name} {values['ndcg@20']:.4f}"
                                                   for name, values in result["test"].items()))
        return 0
    if args.command == "warm-start":
        if args.repeat < 1:
            parser.error("--repeat must be >= 1")
        result = run_warm_start_bench(args.json, events=args.events, users=args.users, items=args.items,
                                      seed=args.seed, repeat=args.repeat, data=args.data, settings=args.settings,
                                      reuse=args.reuse)
        say(f"warm-start: training {result['cold']['train_seconds']:.0f} s cold, {result['warm']['train_seconds']:.0f} "
            f"s warm ({result['savings']['train_seconds']:.0%} saved); test recall@20 cold "
            f"{result['cold']['test_recall@20']:.4f}, warm {result['warm']['test_recall@20']:.4f} -> {args.json}")
        return 0
    if args.command == "cold-start":
        if not 0 < args.holdout < 1 or args.epochs < 1:
            parser.error("--holdout must be in (0, 1) and --epochs >= 1")
        features = tuple(name.strip() for name in args.features.split(",") if name.strip())
        result = run_cold_start_bench(args.json, events=args.events, users=args.users, items=args.items,
                                      holdout=args.holdout, epochs=args.epochs, features=features,
                                      id_dropout=args.id_dropout, text_encoder=args.text_encoder,
                                      text_dim=args.text_dim, seed=args.seed, data=args.data)
        say("cold-start: Recall@20 among the cold items: " + ", ".join(
            f"{name} {result[f'{name}_recall@20']:.4f}" for name in
            ("ours", "category_popularity", "random", "mean_vector")) + f" -> {args.json}")
        return 0
    if args.command == "graph":
        return _graph(args, parser)
    if args.command in ("pipeline", "pipeline-scaling"):
        return _pipeline(args, parser)
    if args.command == "training":
        variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
        path = args.json or Path("bench/results/training") / f"{args.run.name}.json"
        run_training_bench(args.run, variants, args.budget, path)
        say(f"training: results -> {path}")
        return 0
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.threads_per_worker < 0:
        parser.error("--threads-per-worker must be >= 0")
    if args.command == "etl-strong":
        from bench.etl_strong import strong_scaling, write_strong

        if min(args.workers) < 1:
            parser.error("--workers must be >= 1")
        mode = "-processes" if args.processes else ""
        path = args.json or args.out / f"strong-events-{args.events}-{os.cpu_count() or 1}cpu{mode}.json"
        write_strong(strong_scaling(args.events, args.workers, processes=args.processes,
                                    threads_per_worker=args.threads_per_worker, data_root=args.data), path)
        return 0
    if args.command == "etl":
        if args.workers < 1:
            parser.error("--workers must be >= 1")
        path = args.json or args.out / f"{result_name(args.events, args.workers, args.processes)}.json"
        say(f"etl: {args.events} events, {args.workers} worker(s), "
            f"{'processes' if args.processes else 'threads'} -> {path}")
        result = etl_point(args.events, args.workers, processes=args.processes,
                           threads_per_worker=args.threads_per_worker, repeat=args.repeat, data_root=args.data)
        check_edges(result, path)
        write_point(result, path)
        seconds = result["seconds"]
        say("etl: " + ", ".join(f"{engine} {s:.2f}s" for engine, s in seconds.items())
            + f"; homerank speedup vs pandas {result['speedup_vs_pandas']:.2f}, "
              f"vs polars {result['speedup_vs_polars']:.2f}")
    else:
        run_all(args.sizes, args.workers, processes=args.processes, threads_per_worker=args.threads_per_worker,
                repeat=args.repeat, data_root=args.data, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
