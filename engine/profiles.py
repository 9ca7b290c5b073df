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
    than ``gap_minutes``."""
    if schema.SESSION in events.columns and events[schema.SESSION].notna().any():
        return events.groupby(schema.USER)[schema.SESSION].nunique()
    ordered = events[[schema.USER, schema.TS]].sort_values([schema.USER, schema.TS])
    new_user = ordered[schema.USER].ne(ordered[schema.USER].shift())
    gap = ordered[schema.TS].diff() > pd.Timedelta(minutes=gap_minutes)
    return (new_user | gap).groupby(ordered[schema.USER]).sum().astype("int64")


def _top_categories(events: pd.DataFrame, items: pd.DataFrame, top: int) -> pd.DataFrame:
    """top_category_k / top_category_share_k columns per user (k = 1..top); users without a catalogued item get
    nulls."""
    located = events[[schema.USER, schema.ITEM]].merge(items[[schema.ITEM, "category"]], on=schema.ITEM, how="inner")
    located = located[located["category"].notna()]
    counts = located.groupby([schema.USER, "category"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(schema.USER)["n"].transform("sum")
    counts = counts.sort_values([schema.USER, "n", "category"], ascending=[True, False, True])
    counts["k"] = counts.groupby(schema.USER).cumcount() + 1
    counts = counts[counts["k"] <= top]
    columns = {}
    for k in range(1, top + 1):
        kth = counts[counts["k"] == k].set_index(schema.USER)
        columns[f"top_category_{k}"] = kth["category"].astype("string")
        columns[f"top_category_share_{k}"] = kth["share"].astype("float64")
    return pd.DataFrame(columns)


def user_profiles(events: pd.DataFrame, items: pd.DataFrame | None, price_edges: np.ndarray | None,
                  event_types: list[str], reference_time: pd.Timestamp, top: int, gap_minutes: float
                  ) -> pd.DataFrame:
    """The profile rows (module docstring) of the users in ``events`` (one partition, or a whole small log),
    sorted by user id; ``warm`` and the segment are added later."""
    events = _host(events)
    by_user = events.groupby(schema.USER)
    profile = pd.DataFrame({"n_events": by_user.size().astype("int64")})
    for event_type in event_types:
        profile[schema.count_column(event_type)] = (events[schema.EVENT] == event_type).groupby(
            events[schema.USER]).sum().astype("int64")
    profile["n_items"] = by_user[schema.ITEM].nunique().astype("int64")
    day = pd.Timedelta(days=1)
    profile["recency_days"] = (reference_time - by_user[schema.TS].max()) / day
    profile["tenure_days"] = (reference_time - by_user[schema.TS].min()) / day
    profile["active_days"] = events[schema.TS].dt.floor("D").groupby(events[schema.USER]).nunique().astype("int64")
    profile["sessions"] = session_counts(events, gap_minutes)
    if schema.VALUE in events.columns:
        purchases = events[events[schema.EVENT] == "purchase"]
        profile["monetary"] = purchases.groupby(schema.USER)[schema.VALUE].sum().reindex(profile.index).fillna(0.0)
    else:
        profile["monetary"] = 0.0
    hours = events[schema.TS].dt.hour.rename("hour")
    per_hour = hours.groupby([events[schema.USER], hours]).size().rename("n").reset_index()
    per_hour = per_hour.sort_values([schema.USER, "n", "hour"], ascending=[True, False, True])
    profile["peak_hour"] = per_hour.drop_duplicates(schema.USER).set_index(schema.USER)["hour"].astype("int64")
    if items is not None and "category" in items.columns:
        profile = profile.join(_top_categories(events, items, top))
    if items is not None and "price" in items.columns and price_edges is not None:
        priced = events[[schema.USER, schema.ITEM]].merge(items[[schema.ITEM, "price"]], on=schema.ITEM)
        median = priced.groupby(schema.USER)["price"].median()
        profile["median_price"] = median.reindex(profile.index)
        band = np.digitize(profile["median_price"].to_numpy(dtype="float64"), price_edges)
        profile["price_band"] = pd.Series(np.asarray(PRICE_BANDS, dtype=object)[np.minimum(band, 2)],
                                          index=profile.index, dtype="string").where(profile["median_price"].notna())
    return profile.rename_axis(schema.USER).reset_index()


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
    k = max(1, min(segments, len(np.unique(values, axis=0))))
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
    profiles = dd.map_partitions(_with_warm, profiles, core, meta=meta, align_dataframes=False).persist()
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
