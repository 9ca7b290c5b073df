"""Shopper profiles: one row per user of the log, computed on the user partitions of the ETL (every event of a
user is in one partition, so each figure is local to its partition; only the catalogue's item -> category /
price table, its price-band edges and the segment model travel to the workers).

Per user u with events E_u (after validation and dedup), reference time T (the newest event of the log):

    n_<type>        |{e in E_u : type(e) = type}|            n_events = |E_u|, n_items = distinct items
    recency_days    (T - max_e ts(e)) / 1 day                 tenure_days = (T - min_e ts(e)) / 1 day
    active_days     distinct calendar days (UTC) with an event
    sessions        distinct session_id, or (without it) runs of events with gaps <= session_gap_minutes
    monetary        sum of `value` over purchases (0 without a `value` column)
    peak_hour       the hour of day (0-23, UTC) with most events, the earliest on ties
    top_category_k  the k-th most frequent category of E_u's items (ties: category order), share_k its share
    median_price    median catalogue price of E_u's events' items; price_band low | mid | high by the catalogue's
                    price terciles
    warm            the user kept by the k-core (has a model embedding); cold users are served by fallbacks
    segment         k-means (scikit-learn) over standardised log1p(counts, active_days, sessions, monetary) and
                    recency, fitted on a seeded sample of users and applied per partition; segment_name names
                    the centroid's most distinctive figure
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.persisted import persist
from homerank.engine.sorted_events import event_codes, starts_of_runs

log = logging.getLogger(__name__)

SEGMENT_FEATURES = ("n_events", "active_days", "sessions", "monetary", "recency_days")
# the figure a centroid stands out on (largest standardised value) -> its name
SEGMENT_NAMES = {"n_events": "heavy shoppers", "active_days": "regulars", "sessions": "frequent visitors",
                 "monetary": "big spenders", "recency_days": "lapsed shoppers", "n_view": "browsers",
                 "n_cart": "cart builders", "n_purchase": "buyers"}
PRICE_BANDS = ("low", "mid", "high")


@dataclass
class Segments:
    """The fitted segmentation: feature order, standardisation, the k-means model and readable names."""

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    model: Any  # sklearn.cluster.KMeans
    names: list[str]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[self.features].to_numpy(dtype="float64")
        values = np.where(np.isin(self.features, ["recency_days"]), values, np.log1p(np.maximum(values, 0)))
        return (values - self.mean) / self.scale

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if len(frame) == 0:
            return np.zeros(0, dtype="int64")
        return self.model.predict(self.transform(frame)).astype("int64")


def _host(frame: Any) -> pd.DataFrame:
    return frame.to_pandas() if hasattr(frame, "to_pandas") else frame


def session_counts(events: pd.DataFrame, gap_minutes: float) -> pd.Series:
    """Sessions per user: distinct ``session_id`` when the log has it, else runs of events separated by more
    than ``gap_minutes``. Indexed by user id, sorted."""
    codes, users = pd.factorize(events[schema.USER], sort=True)
    counts = _sessions(events, codes.astype(np.int64), len(users), gap_minutes)
    return pd.Series(counts, index=pd.Index(users, name=schema.USER))


def _distinct_per_user(codes: np.ndarray, values: np.ndarray, users: int) -> np.ndarray:
    """(U,) the number of distinct non-negative ``values`` of each user: pairs (user code, value) de-duplicated
    by hashing (`pandas.unique`), then counted per user."""
    keep = values >= 0
    width = int(values.max()) + 1 if keep.any() else 1
    pairs = pd.unique(codes[keep] * width + values[keep])
    return np.bincount(pairs // width, minlength=users).astype(np.int64)


def _items_per_user(events: pd.DataFrame, codes: np.ndarray, users: int) -> np.ndarray:
    """(U,) distinct items per user. Events sorted by (user, item) (the ETL's user partitions): each (user, item)
    is one run of rows, so the runs are counted (one comparison per row, plus a check that the items rise within
    every user); any other order: `_distinct_per_user` over the items' codes (hashing)."""
    if bool((np.diff(codes) >= 0).all()):
        first = starts_of_runs(events[schema.USER]) | starts_of_runs(events[schema.ITEM])
        run_users, run_items = codes[first], events[schema.ITEM].to_numpy()[first]
        same_user = run_users[1:] == run_users[:-1]
        if not bool((run_items[1:][same_user] <= run_items[:-1][same_user]).any()):
            return np.bincount(run_users, minlength=users).astype(np.int64)
    item_codes, _ = pd.factorize(events[schema.ITEM])
    return _distinct_per_user(codes, item_codes.astype(np.int64), users)


def _sessions(events: pd.DataFrame, codes: np.ndarray, users: int, gap_minutes: float) -> np.ndarray:
    if schema.SESSION in events.columns and events[schema.SESSION].notna().any():
        sessions, _ = pd.factorize(events[schema.SESSION])  # missing ids: -1, not counted (as nunique)
        return _distinct_per_user(codes, sessions.astype(np.int64), users)
    times = events[schema.TS].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    order = np.lexsort((times, codes))
    codes, times = codes[order], times[order]
    starts = np.ones(len(codes), dtype=bool)
    starts[1:] = (codes[1:] != codes[:-1]) | (np.diff(times) > int(pd.Timedelta(minutes=gap_minutes).value))
    return np.bincount(codes[starts], minlength=users).astype(np.int64)


def _top_categories(codes: np.ndarray, users: int, category: np.ndarray, labels: np.ndarray, top: int
                    ) -> dict[str, Any]:
    """top_category_k / top_category_share_k (k = 1..top) from each event's category code (``category`` (N,),
    -1: not catalogued; codes follow the names' order in ``labels``): counts per (user, category) from one
    np.unique of their pair codes, ordered per user by count (descending), then category name; users without a
    catalogued item get nulls."""
    located = category >= 0
    width = max(len(labels), 1)
    pairs, counts = np.unique(codes[located] * width + category[located], return_counts=True)
    owner, kind = pairs // width, pairs % width
    total = np.bincount(owner, weights=counts, minlength=users)
    order = np.lexsort((kind, -counts, owner))
    owner, kind, counts = owner[order], kind[order], counts[order]
    first = np.searchsorted(owner, np.arange(users))
    rank = np.arange(len(owner)) - first[owner] + 1  # 1 = the user's most frequent category
    columns: dict[str, Any] = {}
    for k in range(1, top + 1):
        kth = rank == k
        name = np.full(users, None, dtype=object)
        share = np.full(users, np.nan)
        name[owner[kth]] = labels[kind[kth]]
        share[owner[kth]] = counts[kth] / total[owner[kth]]
        columns[f"top_category_{k}"] = pd.array(name, dtype="string")
        columns[f"top_category_share_{k}"] = share
    return columns


def _median_per_user(codes: np.ndarray, users: int, rank: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(U,) the median of each user's prices (NaN without any). ``rank`` (N,) is each event's price as its position
    in ``values`` (the R distinct catalogue prices, ascending; -1: no price), so one int64 key ``user * R + rank``
    sorted once orders every user's prices; the median is the middle value, or the mean of the middle two."""
    width = max(len(values), 1)
    known = rank >= 0
    keys = np.sort(codes[known] * width + rank[known])
    owner, price = keys // width, values[keys % width] if len(values) else np.zeros(0)
    size = np.bincount(owner, minlength=users)
    start = np.cumsum(size) - size
    median = np.full(users, np.nan)
    has = size > 0
    low = start[has] + (size[has] - 1) // 2
    high = start[has] + size[has] // 2
    median[has] = (price[low] + price[high]) / 2
    return median


def user_profiles(events: pd.DataFrame, items: pd.DataFrame | None, price_edges: np.ndarray | None,
                  event_types: list[str], reference_time: pd.Timestamp, top: int, gap_minutes: float
                  ) -> pd.DataFrame:
    """The profile rows (module docstring) of the users in ``events`` (one partition, or a whole small log),
    sorted by user id; ``warm`` and the segment are added later.

    Vectorised over the users: each event gets its user's code (``factorize(sort=True)``: codes in user order),
    and every figure is a bincount, a per-user min/max, or a count of distinct (user code, value) pairs; the
    median price and the top categories sort only the (user, value) pairs they need. No per-user Python loop and
    no pandas group-by (one partition holds ~30,000 users)."""
    events = _host(events)
    codes, ids = pd.factorize(events[schema.USER], sort=True)
    codes = codes.astype(np.int64)
    users = len(ids)
    profile = pd.DataFrame(index=pd.Index(ids, name=schema.USER))
    profile["n_events"] = np.bincount(codes, minlength=users).astype(np.int64)
    kinds = event_codes(events[schema.EVENT], list(event_types))
    width = len(event_types)
    by_type = np.bincount(codes[kinds >= 0] * width + kinds[kinds >= 0], minlength=users * width)
    by_type = by_type.reshape(users, width)
    for position, event_type in enumerate(event_types):
        profile[schema.count_column(event_type)] = by_type[:, position].astype(np.int64)
    profile["n_items"] = _items_per_user(events, codes, users)
    times = events[schema.TS].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    newest = np.full(users, np.iinfo(np.int64).min)
    oldest = np.full(users, np.iinfo(np.int64).max)
    np.maximum.at(newest, codes, times)
    np.minimum.at(oldest, codes, times)
    reference = pd.Timestamp(reference_time).as_unit("ns").value
    day = pd.Timedelta(days=1).value
    profile["recency_days"] = (reference - newest) / day
    profile["tenure_days"] = (reference - oldest) / day
    days = np.floor_divide(times, day)
    profile["active_days"] = _distinct_per_user(codes, days - days.min() if len(days) else days, users)
    profile["sessions"] = _sessions(events, codes, users, gap_minutes)
    if schema.VALUE in events.columns:
        purchase = event_codes(events[schema.EVENT], ["purchase"]) == 0
        value = events[schema.VALUE].to_numpy(dtype="float64", na_value=np.nan)
        profile["monetary"] = np.bincount(codes[purchase], weights=np.nan_to_num(value[purchase]),
                                          minlength=users).astype(np.float64)
    else:
        profile["monetary"] = 0.0
    hours = np.floor_divide(times, pd.Timedelta(hours=1).value) % 24
    per_hour = np.bincount(codes * 24 + hours, minlength=users * 24).reshape(users, 24)
    profile["peak_hour"] = per_hour.argmax(axis=1).astype(np.int64)  # the earliest of the most frequent hours
    catalogue = items.drop_duplicates(schema.ITEM) if items is not None else None
    position = None
    if catalogue is not None:
        position = pd.Index(catalogue[schema.ITEM]).get_indexer(events[schema.ITEM])
    if catalogue is not None and "category" in catalogue.columns:
        names, labels = pd.factorize(catalogue["category"], sort=True)  # missing categories: -1
        category = np.where(position >= 0, names[np.maximum(position, 0)], -1).astype(np.int64)
        for name, column in _top_categories(codes, users, category, np.asarray(labels, dtype=object), top).items():
            profile[name] = column
    if catalogue is not None and "price" in catalogue.columns and price_edges is not None:
        prices = pd.to_numeric(catalogue["price"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        known = ~np.isnan(prices)
        values, ranks = np.unique(prices[known], return_inverse=True)  # the catalogue's, not the events'
        item_rank = np.full(len(prices), -1, dtype=np.int64)
        item_rank[known] = ranks
        rank = np.where(position >= 0, item_rank[np.maximum(position, 0)], -1)
        profile["median_price"] = _median_per_user(codes, users, rank, values)
        band = np.digitize(profile["median_price"].to_numpy(dtype="float64"), price_edges)
        profile["price_band"] = pd.Series(np.asarray(PRICE_BANDS, dtype=object)[np.minimum(band, 2)],
                                          index=profile.index, dtype="string").where(profile["median_price"].notna())
    return profile.reset_index()


def price_terciles(items: pd.DataFrame | None) -> np.ndarray | None:
    """The catalogue's price terciles (2 edges), None without prices."""
    if items is None or "price" not in items.columns:
        return None
    prices = pd.to_numeric(items["price"], errors="coerce").dropna()
    return None if prices.empty else np.quantile(prices.to_numpy(dtype="float64"), [1 / 3, 2 / 3])


def _with_warm(profile: pd.DataFrame, core: Any) -> pd.DataFrame:
    profile = profile.copy()
    profile["warm"] = profile[schema.USER].isin(_host(core)[schema.USER].unique())
    return profile


def fit_segments(sample: pd.DataFrame, segments: int, seed: int) -> Segments:
    """k-means with ``segments`` clusters (fewer when the sample has fewer distinct users) on the standardised
    features of ``sample``; names from each centroid's largest standardised figure."""
    from sklearn.cluster import KMeans

    features = [f for f in (*SEGMENT_FEATURES, "n_view", "n_cart", "n_purchase") if f in sample.columns]
    raw = sample[features].to_numpy(dtype="float64")
    values = np.where(np.isin(features, ["recency_days"]), raw, np.log1p(np.maximum(raw, 0)))
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale[scale == 0] = 1.0
    k = max(1, min(segments, len(pd.DataFrame(values).drop_duplicates())))  # distinct rows, by hashing
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit((values - mean) / scale)
    names: list[str] = []
    for centre in model.cluster_centers_:  # the most distinctive figure whose name is still free
        if k == 1:
            candidates = ["everyone"]
        elif float(np.max(centre)) <= 0:  # nowhere above average
            candidates = ["occasional shoppers"]
        else:
            candidates = [SEGMENT_NAMES[features[i]] for i in np.argsort(-centre) if centre[i] > 0]
        name = next((c for c in candidates if c not in names), candidates[0])
        names.append(name if name not in names else f"{name} ({sum(n.startswith(name) for n in names) + 1})")
    return Segments(features, mean, scale, model, names)


def _with_segment(profile: pd.DataFrame, segments: Segments) -> pd.DataFrame:
    profile = profile.copy()
    labels = segments.predict(profile)
    profile["segment"] = labels
    profile["segment_name"] = pd.Series(np.asarray(segments.names, dtype=object)[labels], index=profile.index,
                                        dtype="string")
    return profile


def profiles_by_user(events: dd.DataFrame, core: dd.DataFrame, items: pd.DataFrame | None, event_types: list[str],
                     reference_time: pd.Timestamp, *, top: int, gap_minutes: float, segments: int, seed: int,
                     sample_users: int) -> tuple[dd.DataFrame, Segments]:
    """Profiles of every user of ``events`` (partitioned by user, like ``core``, the k-cored edges), with
    ``warm`` and the segment; lazily, partition by partition. The segmentation is fitted on at most
    ``sample_users`` users drawn with ``seed`` (the only rows that reach the client)."""
    edges = price_terciles(items)
    meta = user_profiles(_host(events._meta), items, edges, event_types, reference_time, top, gap_minutes)
    profiles = events.map_partitions(user_profiles, items, edges, event_types, reference_time, top, gap_minutes,
                                     meta=meta)
    meta = meta.assign(warm=pd.Series(dtype=bool))
    profiles = persist(dd.map_partitions(_with_warm, profiles, core, meta=meta, align_dataframes=False))
    users = int(dask.compute(profiles.shape[0])[0])
    fraction = min(1.0, sample_users / max(users, 1))
    sample = _host(profiles.sample(frac=fraction, random_state=seed).compute()) if fraction < 1 else _host(
        profiles.compute())
    fitted = fit_segments(sample, segments, seed)
    meta = _with_segment(meta, fitted)
    return profiles.map_partitions(_with_segment, fitted, meta=meta), fitted


def segment_summary(profiles: dd.DataFrame | pd.DataFrame) -> list[dict[str, Any]]:
    """Per segment: users, warm share and median figures (small: one row per segment)."""
    columns = ["segment", "segment_name", "warm", "n_events", "recency_days", "monetary", "n_purchase"]
    frame = profiles[[c for c in columns if c in profiles.columns]]
    grouped = frame.groupby(["segment", "segment_name"])
    summary = grouped.agg({"warm": "mean", "n_events": "mean", "recency_days": "mean", "monetary": "mean"})
    sizes = grouped.size()
    if isinstance(summary, dd.DataFrame):
        summary, sizes = dask.compute(summary, sizes)
    summary, sizes = _host(summary), _host(sizes)
    rows = []
    for (segment, name), row in summary.sort_index().iterrows():
        rows.append({"segment": int(segment), "name": str(name), "users": int(sizes.loc[(segment, name)]),
                     "warm_share": round(float(row["warm"]), 4), "mean_events": round(float(row["n_events"]), 2),
                     "mean_recency_days": round(float(row["recency_days"]), 2),
                     "mean_monetary": round(float(row["monetary"]), 2)})
    return rows
