import pandas as pd

from homerank.engine import schema
from homerank.engine.kcore import kcore_filter


def edges(pairs):
    return pd.DataFrame(pairs, columns=[schema.USER, schema.ITEM])


def test_iterated_kcore_needs_a_second_round():
    # k=2 both sides. Round 1 drops item z (1 user); that leaves user c with 1 item, so round 2 drops c,
    # which leaves item w with 1 user (a only? no: a and b keep w) -> check the fixed point by hand.
    pairs = [("a", "x"), ("a", "y"), ("a", "w"), ("b", "x"), ("b", "y"), ("c", "w"), ("c", "z"), ("d", "w"),
             ("d", "q")]
    kept, rounds = kcore_filter(edges(pairs), 2, 2)
    # round 1 checks the input: item degrees x2 y2 w3 z1 q1 -> not a k-core; the next graph keeps the edges to
    # x, y, w: c->{w}, d->{w} have 1 item left -> dropped, leaving a{x,y,w}, b{x,y}
    # round 2 checks it: w has only a -> the next graph keeps the edges to x, y: a{x,y}, b{x,y}
    pairs = set(map(tuple, kept[[schema.USER, schema.ITEM]].to_numpy()))
    assert pairs == {("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")}
    assert rounds == 3  # two rounds that remove, one that confirms the fixed point


def test_kcore_can_empty_the_graph():
    kept, _ = kcore_filter(edges([("a", "x"), ("b", "y")]), 2, 1)
    assert len(kept) == 0


def test_kcore_of_k1_keeps_everything():
    frame = edges([("a", "x"), ("b", "y")])
    kept, rounds = kcore_filter(frame, 1, 1)
    assert len(kept) == 2 and rounds == 1
