"""The accuracy bench's time-to-threshold helpers, on hand-made curves."""

from bench.accuracy_bench import first_time, first_time_past

CURVE = [
    {"seconds": 10.0, "recall@20": 0.15, "ndcg@20": 0.14},
    {"seconds": 20.0, "recall@20": 0.17, "ndcg@20": 0.13},  # recall past the bar, NDCG not yet
    {"seconds": 30.0, "recall@20": 0.18, "ndcg@20": 0.15},
]


def test_first_time_past_needs_every_metric_at_once():
    assert first_time_past(CURVE, {"recall@20": 0.16, "ndcg@20": 0.14}) == 30.0
    assert first_time_past(CURVE, {"recall@20": 0.15, "ndcg@20": 0.14}) == 10.0  # at the bar counts
    assert first_time_past(CURVE, {"recall@20": 0.19, "ndcg@20": 0.0}) is None
    assert first_time(CURVE, "recall@20", 0.16) == 20.0
