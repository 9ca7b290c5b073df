"""The warm-start bench's figures (bench/warm_start_bench.py) on a hand-made summary: no run needed."""

from bench.warm_start_bench import markdown, time_to_reach


def test_time_to_reach_reads_the_validation_curve():
    curve = [(10.0, 0.10), (20.0, 0.12), (30.0, 0.125)]
    assert time_to_reach(curve, 0.12) == 20.0
    assert time_to_reach(curve, 0.09) == 10.0
    assert time_to_reach(curve, 0.2) is None


def test_markdown_states_both_runs_and_the_savings():
    side = {"wall_seconds": 100.0, "train_seconds": 80.0, "epochs": 30, "best_valid_ndcg@20": 0.12,
            "test_recall@20": 0.2, "test_ndcg@20": 0.15}
    summary = {
        "log": {"events": 1000, "users": 20, "items": 10, "search_share": 0.15, "generator_seed": 42},
        "settings": [], "repeat": 1,
        "feedback": {"impressions": 50, "users": 20, "click": 5, "cart": 2, "purchase": 1, "ctr": 0.1, "events": 8,
                     "seed": 42},
        "id_maps": {"users": {"kept": 18, "new": 2, "without_edges": 0},
                    "items": {"kept": 9, "new": 1, "without_edges": 0}},
        "cold": {**side, "seconds_to_warm_best_valid": 70.0},
        "warm": {**side, "wall_seconds": 40.0, "train_seconds": 20.0, "epochs": 10,
                 "seconds_to_cold_best_valid": 5.0},
        "savings": {"train_seconds": 0.75, "wall_seconds": 0.6, "test_recall@20_difference": 0.0,
                    "test_ndcg@20_difference": 0.0},
        "runs": {"cold": [{"stage_seconds": {"train": 80.0}}], "warm": [{"stage_seconds": {"train": 20.0}}]},
        "machine": {"cpu_count": 2},
    }
    text = markdown(summary)
    assert "| training seconds | 80.0 | 20.0 |" in text and "| epochs | 30 | 10 |" in text
    assert "75% of the training seconds" in text and "after 5.0 s of training" in text
