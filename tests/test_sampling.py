import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homerank.gnn.keys import pair_keys
from homerank.gnn.sampling import is_positive, sample_negatives


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 30), st.integers(1, 20), st.data())
def test_negatives_are_never_positives(num_items, num_users, data):
    density = data.draw(st.floats(0.0, 0.9))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    mask = torch.rand(num_users, num_items, generator=generator) < density
    mask[:, 0] = False  # every user has at least one negative
    users, items = mask.nonzero(as_tuple=True)
    keys = pair_keys(users, items, num_items)
    query_users = torch.arange(num_users).repeat(5)
    negatives = sample_negatives(query_users, num_items, keys, generator)
    assert not is_positive(query_users, negatives, keys, num_items).any()
    assert negatives.min() >= 0 and negatives.max() < num_items


def test_sampling_is_reproducible_with_a_seed():
    keys = pair_keys(torch.tensor([0, 1]), torch.tensor([1, 2]), 10)
    users = torch.tensor([0, 1, 0, 1])
    a = sample_negatives(users, 10, keys, torch.Generator().manual_seed(1))
    b = sample_negatives(users, 10, keys, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_users_with_one_negative_left_still_get_it():
    # user 0 has every item but 7, user 1 every item but 2 and 5; one rejection round forces the fallback
    items = torch.arange(40)
    users = torch.cat([torch.zeros(39, dtype=torch.long), torch.ones(38, dtype=torch.long)])
    positives = torch.cat([items[items != 7], items[(items != 2) & (items != 5)]])
    keys = pair_keys(users, positives, 40)
    query = torch.tensor([0, 1] * 50)
    negatives = sample_negatives(query, 40, keys, torch.Generator().manual_seed(0), max_rounds=1)
    assert set(negatives[query == 0].tolist()) == {7}
    assert set(negatives[query == 1].tolist()) == {2, 5}
