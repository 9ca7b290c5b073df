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


def test_snapshot_run_saves_the_scoring_embeddings_at_every_validation(tmp_path):
    """bench/snapshot_run.py: `homerank run` plus snapshots through the pipeline's on_evaluation hook."""
    import torch

    from bench.snapshot_run import main, snapshot_folder
    from homerank.jobs.rundir import RunDir

    data = tmp_path / "split"
    data.mkdir()
    (data / "train.txt").write_text("0 0 1 2\n1 1 2 3\n2 0 2 3\n3 1 3 4\n")
    (data / "test.txt").write_text("0 3\n1 4\n2 4\n3 0\n")
    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\ndevice: cpu\nsplit: {valid: 1}\ntrain: {embedding_dim: 4, num_layers: 1, "
                      "epochs: 3, eval_every: 1, batch_size: 8, threads: 1}\nevaluate: {ks: [1, 2]}\n")
    run = RunDir(tmp_path / "run")
    assert main(["--input", str(data), "--out", str(run.root), "--config", str(config)]) == 0
    snapshots = sorted(snapshot_folder(run).glob("epoch_*.pt"))
    assert [p.name for p in snapshots] == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    first = torch.load(snapshots[0], weights_only=True)
    assert first["users"].shape == (4, 4) and first["items"].shape == (5, 4) and first["elapsed"] > 0
    assert run.metrics.exists()
