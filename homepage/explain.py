"""Explanations a shopper can read: one sentence per slot, backed by evidence the run holds, next to the slot's
machine-readable ``reason``. Built for a whole block of page rows at once (array operations over the slots; Python
runs once per distinct reason code, never per user or slot), deterministic, titles from the catalogue (the item id
when the catalogue has no title).

The evidence by reason (the kind recorded in ``homepage_stats.json`` under ``explanations`` in brackets):

    for_you:model_score              the item of the user's history (their ``explain_history`` newest items) most
                                     similar to the slot's item, cos(v_slot, v_h) over unit item vectors (inductive for
                                     items the model never saw), the slot's item itself excluded, ties to the newer
                                     item: "Because you viewed <title>" (bought / added to your cart by the
                                     strongest event) [similar_item]; no other history: the category share below
    for_you:fallback_segment_popularity:<s>
                                     "Popular with shoppers like you (<segment name>)" [segment]
    for_you:fallback_popularity      "Popular with <n> shoppers" with n the item's training users [popularity];
                                     n = 0: "More from our catalogue" [catalogue]
    because_you_viewed:similar_to:<i>  "Because you viewed <title of i>" [viewed_item]
    trending_in_category:*           "Trending: <n> shoppers in the last <w> days, <r>x its weekly average" with n the
                                     users whose newest interaction with the item lies in the trending window (w days)
                                     and r = n / (all users of the item x w / days the log spans), shown when the log
                                     spans more than the window and r >= 1.1 [trend]; n = 0: the category share
    new_arrival:*                    "New in <category>, where <p> of your activity is" with the profile's share
                                     [category_share], else "New in <category>, added <d> days ago" [new_arrival]
    buy_again:purchased_before       "You bought this before" / "You bought this <n> times" [purchase_history]
    related_to_searches:*            "Because you searched for '<q>'" with q the user's recent query most similar to the
                                     item in the text-feature space (`homerank.homepage.searches`) [searched_for]
    continue_shopping:last_session   "From your last visit on <d>" with d the day the user's last session began;
                                     "You added this to your cart on your last visit on <d>" when it was carted then
                                     [last_visit]
    pin:merchandising:*              "Featured by our team" [featured]

The category share is the profile's: ``top_category_share_k`` of the k with ``top_category_k`` the item's category
(share of the user's events, so "<p> of your activity is in <category>") [category_share]. Without profiles
(``profiles.enabled: false``, or a run older than them) there is no share and no segment: those slots fall back to the
next evidence (a popularity or recency sentence, or "Picked for you from your activity" [generic]). A boost's
``;boost:+w`` suffix does not change the evidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.split import order_by_user_then_time
from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig
from homerank.homepage.last_session import SESSION_REASON
from homerank.homepage.searches import SEARCH_REASON
from homerank.homepage.sections import SEGMENT_REASON
from homerank.homepage.signals import USER_CHUNK, PageSignals, int32_indexer, user_pieces

GENERIC = "Picked for you from your activity"
SIMILARITY_CHUNK = 4096  # slots whose history vectors are gathered at once: (chunk, H, d) float32
VERBS = np.array(["Because you viewed ", "Because you added ", "Because you bought "], dtype=object)
VERB_ENDS = np.array(["", " to your cart", ""], dtype=object)
QUERY_CHARACTERS = 60  # a longer query is cut there, with an ellipsis


def _percent(shares: np.ndarray) -> np.ndarray:
    """Shares in [0, 1] as whole percentages ("42%"), formatted once per distinct value."""
    rounded = np.rint(np.asarray(shares, dtype=np.float64) * 100).astype(np.int64)
    table = np.array([f"{p}%" for p in range(101)], dtype=object)
    return table[np.clip(rounded, 0, 100)]


def _numbers(values: np.ndarray, fmt: str = "{:,}") -> np.ndarray:
    """Values as text, one ``format`` per distinct value."""
    uniques, inverse = np.unique(values, return_inverse=True)
    return np.array([fmt.format(v) for v in uniques.tolist()], dtype=object)[inverse.reshape(-1)]


class Explainer:
    """Page-wide evidence, gathered once; `explain` turns a block's page rows into sentences.

    ``vectors`` (C, d) are unit item vectors by catalogue position; ``interactions`` the run's (user, item) table
    (``last_ts`` and the ``n_<event>`` counts); ``profiles`` the shopper profiles (None without them); ``first_seen``
    the log's earliest interaction (default: the least ``first_ts``, else ``last_ts``, of ``interactions``), which
    sets the span the trend ratio averages over. ``signals`` may be None here and set (``explainer.signals``)
    before the first `explain`: the page builder sets up the explainer before the signals' item neighbours exist."""

    def __init__(self, catalogue: Catalogue, signals: PageSignals | None, interactions: pd.DataFrame,
                 profiles: pd.DataFrame | None, vectors: np.ndarray, reference_time: pd.Timestamp,
                 settings: HomepageConfig, first_seen: pd.Timestamp | None = None) -> None:
        self.catalogue, self.signals = catalogue, signals
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.items = pd.Index(catalogue.item_ids)
        self.item_text: pd.Index | None = None  # the ids as text (reason codes name items), made when first needed
        self.titles = catalogue.title.astype(object)
        self.category_names, self.category = np.unique(catalogue.category, return_inverse=True)
        self.users = pd.Index(np.sort(interactions[schema.USER].unique()))
        self.history_size = settings.explain_history
        size = max(len(self.items), 1)
        # Every per-interaction table is made per piece of interactions cut at user boundaries when they come in
        # user order (`user_pieces`; one piece otherwise): a piece's int32 codes, int8 verbs, sort keys and
        # permutation are the only temporaries, never one entry per interaction of the whole log (the setup runs
        # before the block workers fork, at the stage's peak memory: the whole log's were ~0.9 GB at 3 * 10^7 events).
        #   history: each user's newest `explain_history` items, newest first (ties by position), with the verb of
        #            the strongest event (a purchase outranks a cart, a cart a view)
        #   bought:  purchases per (user, item), for buy_again, keyed user code * I + position
        #   trend:   per item, the users whose newest interaction lies in the trending window, and all its users
        user_column = interactions[schema.USER].to_numpy()
        item_column = interactions[schema.ITEM].to_numpy()
        times = interactions[schema.LAST_TS].to_numpy().astype("datetime64[ns]", copy=False).view(np.int64)
        events = [(code, interactions[column].to_numpy()) for code, column in
                  ((1, schema.count_column("cart")), (2, schema.count_column("purchase"))) if column in interactions]
        purchases = interactions.get(schema.count_column("purchase"))
        purchase_counts = purchases.to_numpy() if purchases is not None else None
        window = settings.trending_window_days
        recent_from = (reference_time - pd.Timedelta(days=window)).to_datetime64().astype("datetime64[ns]").view(
            np.int64)
        self.recent_users = np.zeros(len(self.items), dtype=np.int64)
        self.all_users = np.zeros(len(self.items), dtype=np.int64)
        kept_users, kept_positions, kept_verbs, bought_keys, bought_counts = [], [], [], [], []
        ordered = user_column if user_column.dtype.kind in "iuf" else int32_indexer(self.users, user_column)
        for piece in user_pieces(ordered, USER_CHUNK):  # ids and their codes are in the same order
            codes = int32_indexer(self.users, user_column[piece])
            positions = int32_indexer(self.items, item_column[piece])
            verb = np.zeros(codes.size, dtype=np.int8)
            for code, counts in events:
                verb[counts[piece] > 0] = code
            # = np.lexsort((positions, -times, codes)); one int64 key when the ETL's (user, item) order holds
            order = order_by_user_then_time(codes, positions, -times[piece])
            users_sorted = codes[order]
            keep = np.arange(order.size) - np.searchsorted(users_sorted, users_sorted) < self.history_size
            order = order[keep]  # rank within the user below the history's size
            kept_users.append(users_sorted[keep])
            kept_positions.append(positions[order])  # int32 positions and int8 verbs: 5 bytes per kept interaction
            kept_verbs.append(verb[order])
            del order, users_sorted, keep, verb
            if purchase_counts is not None:
                bought = np.flatnonzero(purchase_counts[piece] > 0)
                bought_keys.append(codes[bought].astype(np.int64) * size + positions[bought])
                bought_counts.append(purchase_counts[piece][bought])
            recent = times[piece] >= recent_from  # NaT (the least int64) is never recent
            self.recent_users += np.bincount(positions[recent], minlength=len(self.items))
            self.all_users += np.bincount(positions, minlength=len(self.items))
            del codes, positions, recent
        del ordered
        users_kept = np.concatenate(kept_users) if kept_users else np.zeros(0, np.int32)
        del kept_users
        self.history_start = np.searchsorted(users_kept, np.arange(len(self.users)))
        self.history_length = np.bincount(users_kept, minlength=len(self.users))
        del users_kept
        self.history_positions = np.concatenate(kept_positions) if kept_positions else np.zeros(0, np.int32)
        del kept_positions
        self.history_verbs = np.concatenate(kept_verbs) if kept_verbs else np.zeros(0, np.int8)
        del kept_verbs, times
        self.bought_keys = np.concatenate(bought_keys) if bought_keys else np.zeros(0, np.int64)
        key_order = np.argsort(self.bought_keys, kind="stable")
        self.bought_keys = self.bought_keys[key_order]
        self.bought_counts = (np.concatenate(bought_counts)[key_order] if bought_counts
                              else np.zeros(0, np.int64))
        if first_seen is None and len(interactions):
            first_seen = interactions.get(schema.FIRST_TS, interactions[schema.LAST_TS]).min()
        span = (reference_time - first_seen) / pd.Timedelta(days=1) if len(interactions) else 0.0
        self.window_days = window
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = self.all_users * window / span if span > window else np.zeros(len(self.items))
            self.trend_ratio = np.where(expected > 0, self.recent_users / np.where(expected > 0, expected, 1), 0.0)
        created = pd.to_datetime(catalogue.created_at)
        self.age_days = np.floor((reference_time - created) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)
        # the profile's category shares, keyed user code * K + category code
        self.share_keys, self.shares = np.zeros(0, np.int64), np.zeros(0)
        if profiles is not None and len(profiles):
            self._profile_shares(profiles)

    def _profile_shares(self, profiles: pd.DataFrame) -> None:
        codes = self.users.get_indexer(profiles[schema.USER])
        keys, shares = [], []
        k = 1
        while f"top_category_{k}" in profiles and f"top_category_share_{k}" in profiles:
            names = profiles[f"top_category_{k}"].astype(object).to_numpy()
            share = profiles[f"top_category_share_{k}"].to_numpy(dtype=np.float64)
            known = pd.notna(names) & ~np.isnan(share) & (codes >= 0)
            at = np.minimum(np.searchsorted(self.category_names, names[known].astype(str)),
                            max(self.category_names.size - 1, 0))
            found = self.category_names[at] == names[known].astype(str)
            keys.append(codes[known][found].astype(np.int64) * self.category_names.size + at[found])
            shares.append(share[known][found])
            k += 1
        if keys:
            all_keys, all_shares = np.concatenate(keys), np.concatenate(shares)
            order = np.argsort(all_keys, kind="stable")
            self.share_keys, self.shares = all_keys[order], all_shares[order]

    def _share(self, user_codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The profile's share of each slot's item category for its user (n,), NaN when unknown."""
        out = np.full(user_codes.size, np.nan)
        if not self.share_keys.size:
            return out
        keys = user_codes.astype(np.int64) * self.category_names.size + self.category[positions]
        at = np.minimum(np.searchsorted(self.share_keys, keys), self.share_keys.size - 1)
        hit = (self.share_keys[at] == keys) & (user_codes >= 0)
        out[hit] = self.shares[at[hit]]
        return out

    def _most_similar(self, user_codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """For each slot (n,), the history entry (index into ``history_positions``) most similar to its item, -1 when
        the user has no other item. Each user's history vectors are gathered once, (G, H, d), and compared with all of
        the user's slots, (G, S, d), in one batched product per chunk of users."""
        best = np.full(user_codes.size, -1, dtype=np.int64)
        groups, inverse = np.unique(user_codes, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        first = np.searchsorted(inverse[order], np.arange(groups.size))
        within = np.empty(user_codes.size, dtype=np.int64)
        within[order] = np.arange(order.size) - first[inverse[order]]
        width = int(within.max()) + 1 if within.size else 1
        columns = np.arange(self.history_size)
        chunk = max(1, SIMILARITY_CHUNK // width)
        for start in range(0, groups.size, chunk):
            users = groups[start : start + chunk]
            rows = np.flatnonzero((inverse >= start) & (inverse < start + users.size))
            group, slot = inverse[rows] - start, within[rows]
            known = users >= 0
            length = np.where(known, self.history_length[np.maximum(users, 0)], 0)
            index = self.history_start[np.maximum(users, 0)][:, None] + columns[None, :]
            valid = columns[None, :] < length[:, None]
            history = np.where(valid, self.history_positions[np.where(valid, index, 0)], -1)  # (G, H)
            items = np.zeros((users.size, width, self.vectors.shape[1]), dtype=np.float32)
            items[group, slot] = self.vectors[positions[rows]]
            similarity = np.matmul(self.vectors[np.maximum(history, 0)], items.transpose(0, 2, 1))  # (G, H, S)
            ok = valid[group] & (history[group] != positions[rows][:, None])  # (n, H): the item itself excluded
            per_slot = np.where(ok, similarity[group, :, slot], -np.inf)
            column = np.argmax(per_slot, axis=1)  # the first (newest) of equal similarities
            best[rows] = np.where(ok.any(axis=1), index[group, column], -1)
        return best

    def explain(self, page: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Sentences (n,) and evidence kinds (n,) for the rows of ``page`` (user_id, item_id, reason; any order),
        object arrays."""
        count = len(page)
        sentence = np.full(count, GENERIC, dtype=object)
        kind = np.full(count, "generic", dtype=object)
        if not count:
            return sentence, kind
        users = self.users.get_indexer(page["user_id"])
        positions = self.items.get_indexer(page["item_id"])
        positions = np.maximum(positions, 0)  # page items are catalogue items
        codes, raw = pd.factorize(page["reason"], sort=False)  # the distinct reasons, then a loop over those only
        reasons = [str(reason).split(";", 1)[0] for reason in raw]  # without a boost suffix
        labels = np.array([_label(reason) for reason in reasons], dtype=object)
        label = labels[codes] if labels.size else np.zeros(0, dtype=object)
        category = self.category_names[self.category[positions]].astype(object)
        share = self._share(users, positions)
        has_share = ~np.isnan(share)

        def put(mask: np.ndarray, text: Any, what: str) -> None:
            sentence[mask] = text
            kind[mask] = what

        def share_sentence(mask: np.ndarray) -> None:
            rows = mask & has_share
            put(rows, _percent(share[rows]) + " of your activity is in " + category[rows], "category_share")

        # for_you:model_score: the most similar item of the history
        rows = np.flatnonzero(label == "model")
        if rows.size:
            best = self._most_similar(users[rows], positions[rows])
            found = best >= 0
            keys = (self.history_verbs[best[found]].astype(np.int64) * len(self.items)
                    + self.history_positions[best[found]])
            hit = rows[found]
            sentence[hit] = _by_key(keys, lambda k: VERBS[k // len(self.items)] + self.titles[k % len(self.items)]
                                    + VERB_ENDS[k // len(self.items)])
            kind[hit] = "similar_item"
            missing = np.zeros(count, dtype=bool)
            missing[rows[~found]] = True
            share_sentence(missing)
        # segment favourites
        rows = label == "segment"
        if rows.any():
            segment = np.array([_segment_of(r) for r in reasons], dtype=np.int64)[codes[rows]]
            names = pd.Series(self.signals.segment_names, dtype=object).reindex(segment).fillna("")
            names = names.str.replace(r" \(\d+\)$", "", regex=True).to_numpy()  # "lapsed shoppers (2)": a 2nd such
            put(rows, np.where(names != "", "Popular with shoppers like you (" + names.astype(object) + ")",
                               "Popular with shoppers like you"), "segment")
        # popularity
        rows = label == "popularity"
        popular = self.catalogue.popularity[positions].astype(np.int64)
        has = rows & (popular > 0)
        put(has, "Popular with " + _numbers(popular[has]) + np.where(popular[has] == 1, " shopper", " shoppers"),
            "popularity")
        put(rows & (popular == 0), "More from our catalogue", "catalogue")
        # because_you_viewed: the anchor named in the reason
        rows = label == "anchor"
        if rows.any():
            anchor_ids = [reason.rsplit(":", 1)[1] for reason in reasons]
            anchors = self._positions_of(anchor_ids)
            titles = np.where(anchors >= 0, self.titles[np.maximum(anchors, 0)], np.array(anchor_ids, dtype=object))
            put(rows, "Because you viewed " + titles[codes[rows]].astype(object), "viewed_item")
        # trending: the trend figure, else the category share
        rows = label == "trend"
        recent = self.recent_users[positions]
        has = rows & (recent > 0)
        if has.any():
            put(has, _by_key(positions[has], self._trend_text), "trend")
        quiet = rows & (recent == 0)
        popular_here = quiet & (popular > 0)
        put(popular_here, "Popular in " + category[popular_here] + ": " + _numbers(popular[popular_here])
            + np.where(popular[popular_here] == 1, " shopper", " shoppers"), "popularity")
        share_sentence(quiet)
        # new arrivals: the category share, else how new
        rows = label == "new"
        put(rows & has_share, "New in " + category[rows & has_share] + ", where "
            + _percent(share[rows & has_share]) + " of your activity is", "category_share")
        plain = rows & ~has_share
        age = self.age_days[positions[plain]]
        ages = np.where(np.isnan(age), "", np.where(age < 1, ", added today", np.where(
            age < 2, ", added yesterday", ", added " + _numbers(np.nan_to_num(age).astype(np.int64)) + " days ago")))
        put(plain, "New in " + category[plain] + ages, "new_arrival")
        # buy again
        rows = label == "bought"
        if rows.any():
            times = self._purchases(users[rows], positions[rows])
            put(rows, np.where(times > 1, "You bought this " + _numbers(times) + " times", "You bought this before"),
                "purchase_history")
        put(label == "pin", "Featured by our team", "featured")
        # related to searches: the user's query most similar to the item
        rows = np.flatnonzero(label == "search")
        if rows.size and getattr(self.signals, "searches", None) is not None:
            history = self.signals.searches
            best = history.best_query(page["user_id"].to_numpy()[rows], positions[rows])
            found = rows[best >= 0]
            if found.size:
                put(found, _by_key(best[best >= 0], lambda q: "Because you searched for '" + _quoted(history.text[q])
                                   + "'"), "searched_for")
        # continue where you left off: the day the last session began
        rows = np.flatnonzero(label == "session")
        if rows.size and getattr(self.signals, "last_session", None) is not None:
            last = self.signals.last_session
            users_of = page["user_id"].to_numpy()[rows]
            started = last.started(users_of)
            known = ~np.isnat(started)
            days = started[known].astype("datetime64[D]")
            carted = last.was_carted(users_of[known], positions[rows[known]])
            dates = _by_key(days.astype(np.int64), lambda d: np.array(
                [_day(pd.Timestamp(np.datetime64(int(v), "D"))) for v in d.tolist()], dtype=object))
            put(rows[known], np.where(carted, "You added this to your cart on your last visit on " + dates,
                                      "From your last visit on " + dates), "last_visit")
        return sentence, kind

    def _trend_text(self, positions: np.ndarray) -> np.ndarray:
        """The trend sentence of each of ``positions`` (items with recent users)."""
        recent, ratio = self.recent_users[positions], self.trend_ratio[positions]
        text = ("Trending: " + _numbers(recent) + np.where(recent == 1, " shopper", " shoppers")
                + f" in the last {self.window_days:g} days")
        return text + np.where(ratio >= 1.1, ", " + _numbers(np.round(ratio, 1), "{:.1f}") + "× its weekly average", "")

    def _positions_of(self, ids: list[str]) -> np.ndarray:
        """Catalogue positions of item ids written in reason codes (text), -1 when not found."""
        if self.item_text is None:
            self.item_text = pd.Index(self.items.astype(str))
        return self.item_text.get_indexer(ids) if ids else np.zeros(0, dtype=np.int64)

    def _purchases(self, user_codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = np.zeros(user_codes.size, dtype=np.int64)
        if not self.bought_keys.size:
            return out
        keys = user_codes.astype(np.int64) * max(len(self.items), 1) + positions
        at = np.minimum(np.searchsorted(self.bought_keys, keys), self.bought_keys.size - 1)
        hit = (self.bought_keys[at] == keys) & (user_codes >= 0)
        out[hit] = self.bought_counts[at[hit]]
        return out


def _by_key(keys: np.ndarray, make: Any) -> np.ndarray:
    """``make`` (distinct keys -> their texts) applied once per distinct key, spread back over ``keys`` (n,)."""
    uniques, inverse = np.unique(keys, return_inverse=True)
    return np.asarray(make(uniques), dtype=object)[inverse.reshape(-1)]


def _quoted(queries: np.ndarray) -> np.ndarray:
    """Queries (n,) as shown between quotes: cut after `QUERY_CHARACTERS` characters, with an ellipsis."""
    return np.array([q if len(q) <= QUERY_CHARACTERS else q[:QUERY_CHARACTERS].rstrip() + "…"
                     for q in np.asarray(queries, dtype=object).tolist()], dtype=object)


def _day(when: pd.Timestamp) -> str:
    """A day as a shopper reads it: "26 Oct 2026"."""
    return f"{when.day} {when:%b %Y}"


def _label(reason: str) -> str:
    """The evidence family of a reason code (without its ``;boost:`` suffix)."""
    if reason == "for_you:model_score":
        return "model"
    if reason.startswith(SEGMENT_REASON):
        return "segment"
    if reason == "for_you:fallback_popularity":
        return "popularity"
    if reason.startswith("because_you_viewed:similar_to:"):
        return "anchor"
    if reason.startswith("trending_in_category:"):
        return "trend"
    if reason.startswith("new_arrival:"):
        return "new"
    if reason.startswith("buy_again:"):
        return "bought"
    if reason.startswith("pin:"):
        return "pin"
    if reason == SEARCH_REASON:
        return "search"
    if reason == SESSION_REASON:
        return "session"
    return "other"


def _segment_of(reason: str) -> int:
    tail = reason.rsplit(":", 1)[-1]
    return int(tail) if reason.startswith(SEGMENT_REASON + ":") and tail.lstrip("-").isdigit() else -1

