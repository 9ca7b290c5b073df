"""Config keys renamed or retired in the layout redesign: old configs keep working, with a warning, and a retired
option that would change the result is an error naming it."""

from __future__ import annotations

import logging

import pytest

from homerank.engine.errors import HomerankError
from homerank.jobs.config import parse_config


def test_old_key_names_move_to_the_new_ones_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = parse_config({"interactions": {"weights": {"view": 1.0, "click": 3.0, "cart": 4.0,
                                                            "purchase": 8.0}},
                               "train": {"refit": True, "linear_filter": {"weights": [0.0, 0.3], "refit": False}}})
    assert config.interactions.event_weights["click"] == 3.0
    assert config.train.retrain_with_valid is True
    assert config.train.linear_filter.shares == [0.0, 0.3] and config.train.linear_filter.refit_with_valid is False
    assert "interactions.weights is now called interactions.event_weights" in caplog.text
    assert "train.linear_filter.refit is now called train.linear_filter.refit_with_valid" in caplog.text


def test_giving_both_names_is_an_error():
    with pytest.raises(HomerankError, match="train: .*old name of train.retrain_with_valid"):
        parse_config({"train": {"refit": True, "retrain_with_valid": False}})


def test_retired_options_are_dropped_at_their_old_default_and_refused_otherwise(caplog):
    with caplog.at_level(logging.WARNING):
        config = parse_config({"train": {"init": "normal", "snapshots": False}})
    assert "train.init was removed" in caplog.text and config.train == parse_config({}).train
    with pytest.raises(HomerankError, match="train.init was removed: the spectral warm start"):
        parse_config({"train": {"init": "spectral"}})
    with pytest.raises(HomerankError, match="train.snapshots was removed"):
        parse_config({"train": {"snapshots": True}})
