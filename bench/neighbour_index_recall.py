"""What the homepage's item-neighbour search costs and keeps, exact against the inverted file, on a trained run.

    python -m bench.neighbour_index_recall --run RUN [--anchors 4096] [--count 500] [--json FILE]

The "because you viewed" row reads each anchor's ``homepage.candidates`` closest model items by cosine
(`homerank.homepage.signals.item_neighbours`); nearly every item is an anchor, so the search is a batch of I
queries over I vectors. For a random sample of anchors (seed 0) this times the exact search (``IndexFlatIP``) and
`homerank.gnn.item_index.ItemIndex` with ``approximate="ivf"`` (the setting above ``NEIGHBOUR_EXACT_ITEMS``),
both with the process's faiss threads, scales the sampled search time to all I anchors, and reports the recall of
the inverted file's lists against the exact ones at 10, 50 and ``count + 1`` (|found ∩ exact| / k, averaged).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.machine import machine_info, run_parser, write_result
from homerank.gnn.item_index import IVF_PROBES, ItemIndex, ivf_lists, normalise
from homerank.gnn.scorer import Scorer
from homerank.jobs.rundir import RunDir


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over rows of |found[:k] ∩ exact[:k]| / k."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found.tolist(), exact.tolist(),
                                                                          strict=True)]))


def neighbour_recall(run: Path, anchors: int = 4096, count: int = 500) -> dict[str, Any]:
    vectors = normalise(Scorer.load(RunDir(run).scorer).item_embeddings.detach().cpu().numpy())
    items = vectors.shape[0]
    sample = np.sort(np.random.default_rng(0).choice(items, min(anchors, items), replace=False))
    queries, wanted = vectors[sample], min(count + 1, items)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, exact = flat.search(queries, wanted)
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index = ItemIndex(exact_threshold=0, approximate="ivf").build(vectors)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, found = index.search(queries, wanted)
    search_seconds = time.perf_counter() - start
    scale = items / sample.size
    return {
        "run": str(run), "items": items, "anchors_sampled": int(sample.size), "neighbours": wanted,
        "faiss_threads": faiss.omp_get_max_threads(), "ivf_lists": ivf_lists(items), "ivf_probes": IVF_PROBES,
        "seconds_all_anchors": {"exact": exact_seconds * scale, "ivf": build_seconds + search_seconds * scale},
        "ivf_build_seconds": build_seconds,
        "recall": {str(k): recall_at(found, exact, k) for k in sorted({10, 50, wanted}) if k <= wanted},
    }


def main(argv: list[str] | None = None) -> int:
    parser = run_parser("bench.neighbour_index_recall", __doc__)
    parser.add_argument("--anchors", type=int, default=4096, help="anchors sampled")
    parser.add_argument("--count", type=int, default=500, help="neighbours per anchor (homepage.candidates)")
    args = parser.parse_args(argv)
    result = neighbour_recall(args.run, args.anchors, args.count)
    result["machine"] = machine_info(("faiss-cpu",))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
