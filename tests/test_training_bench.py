"""The training bench (bench/training_bench.py): variant parsing and one tiny run of two variants."""

from __future__ import annotations

import json

import pytest

from bench.training_bench import parse_variant, run_training_bench, time_to_reach


def test_variants_parse_train_keys_as_yaml_and_names_may_hold_colons():
    assert parse_variant("today: bpr:") == ("today: bpr", {})
    assert parse_variant("big:loss=softmax,steps_per_epoch=8,lr=0.05") == (
        "big", {"loss": "softmax", "steps_per_epoch": 8, "lr": 0.05})


def test_time_to_reach_is_the_first_evaluation_at_or_past_the_target():
    variant = {"history": [{"valid_ndcg@20": 0.1, "elapsed": 1.0}, {"valid_ndcg@20": 0.3, "elapsed": 2.0},
                           {"valid_ndcg@20": 0.2, "elapsed": 3.0}]}
    assert time_to_reach(variant, 0.25) == 2.0
    assert time_to_reach(variant, 0.3) == 2.0
    assert time_to_reach(variant, 0.31) is None


def test_two_variants_side_by_side_on_a_tiny_run(homepage_run, tmp_path):
    run = homepage_run[0]  # the session's run on the tiny log (conftest): the bench only reads its etl and graph
    variants = {"small batches": {"batch_size": 512, "epochs": 3, "embedding_dim": 8},
                "2 steps/epoch": {"steps_per_epoch": 2, "epochs": 3, "embedding_dim": 8},
                "the default past the size rule": {"large_data_pairs": 10, "epochs": 3, "embedding_dim": 8}}
    result = run_training_bench(run, variants, 60.0, tmp_path / "out.json")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["reference"] == "small batches" and set(saved["variants"]) == set(variants)
    pairs = saved["data"]["train_pairs"]
    assert saved["variants"]["2 steps/epoch"]["pairs_per_step"] == -(-pairs // 2)
    assert saved["variants"]["small batches"]["pairs_per_step"] == 512
    sized = saved["variants"]["the default past the size rule"]  # reported as trained: 4 steps at lr 0.1
    assert (sized["pairs_per_step"], sized["lr"]) == (-(-pairs // 4), 0.1)
    for variant in result["variants"].values():
        assert variant["epochs"] == 3 and len(variant["history"]) == 3
        assert 0 < variant["best_valid_ndcg@20"] <= 1 and variant["epoch_seconds_median"] > 0
    reference = saved["variants"]["small batches"]
    assert reference["seconds_to_reference_best"] == pytest.approx(reference["seconds_to_best"])
    assert "| 2 steps/epoch |" in (tmp_path / "out.md").read_text()
