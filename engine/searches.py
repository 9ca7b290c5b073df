"""Search rows after ingest: one dataset ordered by user, and each user's search figures for the profile.

Ingest (`homerank.engine.ingest.validate_searches`) leaves the clean searches (user_id, timestamp, query and the
optional session_id) as one Parquet file per input piece. Here they are range-partitioned by user (one shuffle of
the searches only, never of the events), put in (user, timestamp, query) order inside each partition and rid of
exact duplicates (`searches_by_user`): the ``etl/searches/`` dataset. Every user's searches are then in one
partition, so the per-user figures are local (`search_summary`):

    n_searches         |S_u|, the user's searches
    last_search        max_{s in S_u} ts(s)
    top_query_terms    the ``top`` most frequent terms over the user's queries, most frequent first (ties: the
                       alphabetically first), joined by ", "; a term is a lower-cased word of letters and digits
                       (the token pattern of the item text features, `homerank.gnn.text_features.TOKEN_PATTERN`)
                       that is not an English stop word (scikit-learn's list)

The figures join the shopper profiles (`homerank.engine.profiles`) by user id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from homerank.engine import schema

TERM_PATTERN = r"(?u)\b\w+\b"  # the item text features' token pattern: "Phones 2" has the terms phones, 2
SEARCH_COLUMNS = (schema.USER, schema.TS, schema.QUERY)  # plus session_id when the log has it


def _host(frame: Any) -> pd.DataFrame:
    return frame.to_pandas() if hasattr(frame, "to_pandas") else frame


def read_searches(folder: Path) -> dd.DataFrame | None:
    """The search parts ingest wrote into ``folder`` as one dask frame (one partition per part), None when there is
    none (the log has a ``query`` column but no valid search row)."""
    parts = sorted(str(part) for part in Path(folder).glob("part-*.parquet"))
    return dd.read_parquet(parts) if parts else None


def order_and_drop_duplicates(searches: Any) -> Any:
    """One partition's searches in (user, timestamp, query) order without exact duplicates (every column equal),
    with a fresh index."""
    searches = _host(searches)
    order = [c for c in (schema.USER, schema.TS, schema.QUERY, schema.SESSION) if c in searches.columns]
    return searches.sort_values(order, kind="stable").drop_duplicates().reset_index(drop=True)


def searches_by_user(searches: dd.DataFrame, rows: int, rows_per_partition: int) -> dd.DataFrame:
    """Range-partition the searches by user (a sort: one shuffle of the search rows), about ``rows_per_partition``
    rows per partition, each in (user, timestamp, query) order without exact duplicates. Searches that fit one
    partition (the usual case: a small share of a log) are concatenated instead, with no quantile pass."""
    npartitions = max(1, -(-rows // rows_per_partition))
    if npartitions == 1:
        by_user = searches.repartition(npartitions=1)
    else:
        by_user = searches.sort_values(schema.USER, npartitions=npartitions)
    meta = order_and_drop_duplicates(by_user._meta)
    return by_user.map_partitions(order_and_drop_duplicates, meta=meta)


def top_terms(users: pd.Series, queries: pd.Series, top: int) -> pd.Series:
    """User id -> the user's ``top`` most frequent query terms (module docstring), joined by ", " ("string").

    Each distinct query is tokenised once; the (user, term) pairs of all rows are then counted as int64 keys
    user * V + term (V: the vocabulary, numbered in alphabetical order) with one ``np.unique``, and the first ``top``
    of each user taken after one lexsort by (user, -count, term)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # the profiles' k-means imports it anyway

    empty = pd.Series(dtype="string", name="top_query_terms")
    user_codes, user_ids = pd.factorize(users.reset_index(drop=True), sort=True)
    query_codes, distinct = pd.factorize(queries.reset_index(drop=True).astype("string").str.lower())
    tokens = [[term for term in re.findall(TERM_PATTERN, str(text)) if term not in ENGLISH_STOP_WORDS]
              for text in distinct]
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    if not lengths.sum() or not len(user_codes):
        return empty
    vocabulary, term_codes = np.unique(np.concatenate([np.asarray(t, dtype=object) for t in tokens]).astype(str),
                                       return_inverse=True)
    first_term = np.cumsum(lengths) - lengths  # (D,) each distinct query's first entry in term_codes
    valid = query_codes >= 0
    per_row = np.where(valid, lengths[np.maximum(query_codes, 0)], 0)  # terms of each row
    row_start = np.cumsum(per_row) - per_row
    within = np.arange(int(per_row.sum())) - np.repeat(row_start, per_row)
    terms = term_codes.ravel()[np.repeat(first_term[np.maximum(query_codes, 0)], per_row) + within]
    keys, counts = np.unique(np.repeat(user_codes, per_row).astype(np.int64) * vocabulary.size + terms,
                             return_counts=True)
    user, term = keys // vocabulary.size, keys % vocabulary.size
    order = np.lexsort((term, -counts, user))
    user, term = user[order], term[order]
    group_start = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    rank = np.arange(user.size) - np.repeat(group_start, np.diff(np.r_[group_start, user.size]))
    joined = pd.Series(np.full(user_codes.max() + 1, None, dtype=object))
    for k in range(top):  # at most `top` column operations, never one per user
        at = rank == k
        column = pd.Series(np.full(joined.size, None, dtype=object))
        column[user[at]] = vocabulary[term[at]]
        joined = column.where(joined.isna(), joined + ", " + column.fillna("")).where(column.notna(), joined)
    present = joined.notna().to_numpy()
    return pd.Series(joined[present].to_numpy(), index=pd.Index(np.asarray(user_ids)[present], name=schema.USER),
                     dtype="string", name="top_query_terms")


def search_summary(searches: Any, top: int) -> pd.DataFrame:
    """The search figures (module docstring) of the users of one user partition of searches: user_id, n_searches
    (int64), last_search (datetime64[ns]), top_query_terms ("string"), one row per user, in user order."""
    searches = _host(searches)
    by_user = searches.groupby(schema.USER, sort=True)
    summary = pd.DataFrame({"n_searches": by_user.size().astype("int64"),
                            "last_search": by_user[schema.TS].max().astype("datetime64[ns]")})
    summary["top_query_terms"] = top_terms(searches[schema.USER], searches[schema.QUERY], top).reindex(
        summary.index).astype("string")
    return summary.rename_axis(schema.USER).reset_index()


def summaries_by_user(searches: dd.DataFrame, top: int) -> dd.DataFrame:
    """`search_summary` on every user partition of ``searches`` (lazy)."""
    meta = search_summary(searches._meta, top)
    return searches.map_partitions(search_summary, top, meta=meta)


def with_search_figures(profiles: dd.DataFrame, summary: dd.DataFrame | None) -> dd.DataFrame:
    """The profiles with n_searches (0 for users who never searched), last_search and top_query_terms (null), by a
    left join on user id (users who searched but have no valid event have no profile). Without searches (None) the
    profiles are returned unchanged."""
    if summary is None:
        return profiles
    joined = profiles.merge(summary, on=schema.USER, how="left")
    return joined.assign(n_searches=joined["n_searches"].fillna(0).astype("int64"))
