"""The default training schedule by data size (train.large_data_pairs) and the configs that keep their own."""

import pytest

from homerank.gnn.config import TrainConfig
from homerank.jobs.config import JobConfig, parse_set_option


def test_small_data_keeps_eight_steps_at_lr_0_05():
    config = TrainConfig()
    resolved = config.for_pairs(1_999_999)
    assert resolved is config
    assert (resolved.steps_per_epoch, resolved.lr, resolved.pairs_per_step(1_999_999)) == (8, 0.05, 250_000)


def test_large_data_takes_four_steps_at_lr_0_1_and_resolving_again_changes_nothing():
    resolved = TrainConfig().for_pairs(4_150_191)
    assert (resolved.steps_per_epoch, resolved.lr) == (4, 0.1)
    assert resolved.pairs_per_step(4_150_191) == 1_037_548  # ceil(4,150,191 / 4)
    assert resolved.for_pairs(4_150_191) is resolved
    assert resolved.for_pairs(10) is resolved  # a resolved config is a named schedule: the refit keeps it


@pytest.mark.parametrize("named", [{"lr": 0.02}, {"steps_per_epoch": 6}, {"batch_size": 16384},
                                   {"steps_per_epoch": None}])
def test_a_schedule_of_its_own_is_kept(named):
    config = TrainConfig(**named)
    assert config.for_pairs(50_000_000) is config


def test_the_defaults_written_out_still_resolve():
    """configs/example.yaml writes steps_per_epoch: 8 and lr: 0.05: copying it must not turn the rule off."""
    resolved = TrainConfig(steps_per_epoch=8, lr=0.05, batch_size=16384).for_pairs(3_000_000)
    assert (resolved.steps_per_epoch, resolved.lr) == (4, 0.1)


def test_the_threshold_is_a_setting_and_null_turns_it_off():
    assert TrainConfig(large_data_pairs=100).for_pairs(100).steps_per_epoch == 4
    assert TrainConfig(large_data_pairs=None).for_pairs(10**9).steps_per_epoch == 8
    key, value = parse_set_option("train.large_data_pairs=null")
    assert key == "train.large_data_pairs" and value is None
    with pytest.raises(ValueError):
        JobConfig(train={"large_data_pairs": 0})


def test_a_fixed_schedule_survives_more_pairs():
    """The train stage fixes the schedule for its training pairs: the refit on train + validation pairs (more of
    them, perhaps past the threshold) trains the same schedule."""
    below = TrainConfig().fixed_schedule(1_900_000)
    assert (below.steps_per_epoch, below.lr) == (8, 0.05)
    assert (below.for_pairs(2_300_000).steps_per_epoch, below.for_pairs(2_300_000).lr) == (8, 0.05)
    above = TrainConfig().fixed_schedule(2_100_000)
    assert (above.for_pairs(10).steps_per_epoch, above.for_pairs(10).lr) == (4, 0.1)
