"""Stage 6 — homepage: turn model scores, the catalogue and recent behaviour into a personalised page of
ordered sections per user, with rules applied across the whole page.

Sections (``homepage.sections``, in order): ``for_you`` (the model's ranking), ``because_you_viewed`` (items
closest in learned item-embedding cosine to the user's most recently viewed item), ``trending_in_category``
(recency-weighted interaction counts, sum over recent edges of 0.5 ** (age_days / half_life), in the user's
top category), ``new_arrivals`` (items created in the last N days, ranked for the user; items never
interacted with get an inductive embedding = mean of the model items of the same category and price band,
else of the category), ``buy_again`` (items bought before, in repeat-purchase categories, newest first).

Rules across the page: an item appears once; out-of-stock items never appear; purchased items only in
``buy_again``; per-row diversity is either at most ``max_per_category`` items of one category per row
(``diversity: category_cap``) or maximal marginal relevance over learned item vectors with trade-off
``mmr_lambda`` (``diversity: mmr``). Merchandising boosts re-rank a row's candidates and pins take fixed slots
(``homepage.merchandising``, see jobs.merchandising); a pinned item is kept out of every other row. Every slot
has a machine-readable ``reason`` (``...;boost:+w`` when a boost moved it, ``pin:merchandising:rowN``).
Users without a model embedding (no training history) get popularity / global trending rows, so no page is
empty.

Writes ``homepage/`` (Parquet: user_id, section, section_title, slot, item_id, score, reason, with a
``_SUCCESS.json`` manifest), ``homepage.jsonl`` (one object per user, rows in order) and
``homepage_stats.json`` (page-quality metrics next to a plain top-K baseline).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.split import SPLIT
from homerank.gnn.metrics import top_k
from homerank.jobs.artifacts import load_embeddings, load_scorer, require
from homerank.jobs.config import HomepageConfig, JobConfig, SectionConfig
from homerank.jobs.merchandising import Merchandising, load_merchandising
from homerank.jobs.page_quality import page_quality
from homerank.jobs.page_rules import check_page_rules
from homerank.jobs.rundir import RunDir, atomic_path, read_json, write_json, write_parquet_dataset

log = logging.getLogger(__name__)

HOMEPAGE_COLUMNS = ["user_id", "section", "section_title", "slot", "item_id", "score", "reason"]
SECONDS_PER_DAY = 86_400.0


@dataclass
class Catalogue:
    """Item facts by item id (position = row of every array)."""

    item_ids: np.ndarray
    category: np.ndarray
    title: np.ndarray
    in_stock: np.ndarray
    created_at: np.ndarray
    price_band: np.ndarray
    model_index: np.ndarray  # item_index in the model, -1 for items it never saw
    trending: np.ndarray  # recency-weighted interaction count
    popularity: np.ndarray  # distinct users in training

    def position(self) -> dict[Any, int]:
        return {item: i for i, item in enumerate(self.item_ids.tolist())}


def _catalogue(run: RunDir, interactions: pd.DataFrame, item_index: pd.DataFrame, edges: pd.DataFrame,
               ref_time: pd.Timestamp, settings: HomepageConfig) -> Catalogue:
    items = (pd.read_parquet(run.catalogue) if run.catalogue.exists()
             else pd.DataFrame({schema.ITEM: interactions[schema.ITEM].unique()}))
    seen = pd.DataFrame({schema.ITEM: interactions[schema.ITEM].unique()})
    items = items.drop_duplicates(schema.ITEM).merge(seen, on=schema.ITEM, how="outer")
    items["category"] = items.get("category", pd.Series(index=items.index, dtype=object)).fillna("Other")
    titles = items.get("title", pd.Series(index=items.index, dtype=object))
    items["title"] = titles.fillna(items[schema.ITEM].astype(str))
    items["in_stock"] = items.get("in_stock", pd.Series(True, index=items.index)).fillna(False).astype(bool)
    created = pd.to_datetime(items.get("created_at", pd.Series(pd.NaT, index=items.index)), errors="coerce")
    items["created_at"] = created.astype("datetime64[ns]")
    price = pd.to_numeric(items.get("price", pd.Series(np.nan, index=items.index)), errors="coerce")
    items["price_band"] = pd.qcut(price.rank(method="first"), 4, labels=False) if price.notna().sum() >= 4 else 0
    items["price_band"] = items["price_band"].fillna(-1).astype(int)
    items = items.merge(item_index, on=schema.ITEM, how="left")
    recent = interactions[interactions[schema.LAST_TS] >= ref_time - pd.Timedelta(days=settings.trending_window_days)]
    age = (ref_time - recent[schema.LAST_TS]).dt.total_seconds() / SECONDS_PER_DAY
    trend = (0.5 ** (age / settings.trending_half_life_days)).groupby(recent[schema.ITEM]).sum()
    train = edges[edges[SPLIT] == "train"]
    popularity = train.groupby(schema.ITEM_INDEX).size()
    items = items.sort_values(schema.ITEM, kind="stable").reset_index(drop=True)
    model_index = items[schema.ITEM_INDEX].fillna(-1).astype(np.int64).to_numpy()
    return Catalogue(
        item_ids=items[schema.ITEM].to_numpy(), category=items["category"].astype(str).to_numpy(),
        title=items["title"].astype(str).to_numpy(), in_stock=items["in_stock"].to_numpy(),
        created_at=items["created_at"].to_numpy(), price_band=items["price_band"].to_numpy(),
        model_index=model_index,
        trending=items[schema.ITEM].map(trend).fillna(0.0).to_numpy(dtype=np.float64),
        popularity=np.where(model_index >= 0, pd.Series(model_index).map(popularity).fillna(0).to_numpy(), 0.0),
    )


def _inductive_item_vectors(catalogue: Catalogue, item_emb: torch.Tensor) -> torch.Tensor:
    """Embeddings for every catalogue item: the model's where it has one, else the mean of the model items
    of the same (category, price band), else of the category, else of all items. Shape (n_catalogue, d)."""
    vectors = torch.zeros(len(catalogue.item_ids), item_emb.shape[1])
    known = catalogue.model_index >= 0
    vectors[torch.from_numpy(known)] = item_emb[torch.from_numpy(catalogue.model_index[known])]
    frame = pd.DataFrame({"category": catalogue.category, "band": catalogue.price_band, "known": known})
    global_mean = item_emb.mean(0)
    for position in np.flatnonzero(~known):
        same = frame["known"] & (frame["category"] == catalogue.category[position])
        tight = same & (frame["band"] == catalogue.price_band[position])
        group = np.flatnonzero(tight if tight.any() else same)
        vectors[position] = vectors[torch.from_numpy(group)].mean(0) if group.size else global_mean
    return vectors


def _title(section: SectionConfig, **values: str) -> str:
    try:
        return section.title.format(**values)
    except (KeyError, IndexError):
        return section.title


class PageBuilder:
    """Fills one user's sections in order under the page rules, the diversity setting and the merchandising
    rules. ``vectors`` are unit-norm item vectors by catalogue position (n_catalogue, d), used by MMR."""

    def __init__(self, catalogue: Catalogue, settings: HomepageConfig, vectors: np.ndarray,
                 merchandising: Merchandising | None = None) -> None:
        self.catalogue = catalogue
        self.settings = settings
        self.vectors = vectors
        self.merchandising = merchandising or Merchandising()
        self.reserved = self.merchandising.pinned_positions  # pinned items appear only in their pinned slot
        self.rows: list[tuple] = []

    def _boosted(self, section: str, candidates: np.ndarray, scores: np.ndarray, reasons: list[str] | str
                 ) -> tuple[np.ndarray, np.ndarray, list[str] | str]:
        """Re-rank the head of a source by z(score) + boost (see jobs.merchandising); boosted slots say so."""
        boost = self.merchandising.boost_for(section)
        if boost is None:
            return candidates, scores, reasons
        head = min(candidates.size, self.settings.candidates)
        lift = boost[candidates[:head]]
        if not lift.any():
            return candidates, scores, reasons
        z = scores[:head] - scores[:head].mean()
        z = z / (z.std() or 1.0)
        order = np.argsort(-(z + lift), kind="stable")
        full = [reasons] * candidates.size if isinstance(reasons, str) else list(reasons)
        head_reasons = [f"{full[i]};boost:{lift[i]:+g}" if lift[i] else full[i] for i in order.tolist()]
        return (np.concatenate([candidates[:head][order], candidates[head:]]),
                np.concatenate([scores[:head][order], scores[head:]]), head_reasons + full[head:])

    def _mmr(self, pool: list[tuple[int, float, str]], room: int) -> list[tuple[int, float, str]]:
        """Maximal marginal relevance over the pool (in relevance order): repeatedly take the item maximising
        lambda * rel(i) - (1 - lambda) * max_{j chosen} cos(v_i, v_j), with rel = 1 - rank / |pool|."""
        lam = self.settings.mmr_lambda
        positions = np.array([p for p, _, _ in pool])
        relevance = 1.0 - np.arange(len(pool)) / len(pool)
        vectors = self.vectors[positions]
        closest = np.full(len(pool), -np.inf)
        taken = np.zeros(len(pool), dtype=bool)
        chosen: list[int] = []
        for _ in range(min(room, len(pool))):
            redundancy = np.where(np.isfinite(closest), closest, 0.0)
            gain = np.where(taken, -np.inf, lam * relevance - (1 - lam) * redundancy)
            best = int(np.argmax(gain))
            chosen.append(best)
            taken[best] = True
            closest = np.maximum(closest, vectors @ vectors[best])
        return [pool[i] for i in chosen]

    def fill(self, user_id: Any, section: SectionConfig, title: str,
             sources: list[tuple[np.ndarray, np.ndarray, list[str] | str]], used: set[int], purchased: set[int],
             allow_purchased: bool = False, category_cap: bool = True) -> int:
        """Take items from ``sources`` (candidates, scores, reasons), in order, until the row is full; active
        pins of this section then take their slots."""
        def allowed(position: int) -> bool:
            return (position not in used and bool(self.catalogue.in_stock[position])
                    and (allow_purchased or position not in purchased))

        pins = [p for p in self.merchandising.pins_for(section.kind) if allowed(p.position)]
        room = section.slots - len(pins)
        mmr = self.settings.diversity == "mmr" and category_cap
        pool_size = max(room * self.settings.mmr_pool_factor, room) if mmr else room
        pool: list[tuple[int, float, str]] = []
        offered: set[int] = set()  # a later source cannot offer an item twice
        per_category: dict[str, int] = {}
        for source in sources:
            candidates, scores, reasons = self._boosted(section.kind, *source)
            for rank, position in enumerate(candidates.tolist()):
                if len(pool) >= pool_size:
                    break
                if not allowed(position) or position in self.reserved or position in offered:
                    continue
                category = self.catalogue.category[position]
                if category_cap and not mmr:
                    if per_category.get(category, 0) >= self.settings.max_per_category:
                        continue
                    per_category[category] = per_category.get(category, 0) + 1
                used_reason = reasons if isinstance(reasons, str) else reasons[rank]
                pool.append((position, float(scores[rank]), used_reason))
                offered.add(position)
        row = self._mmr(pool, room) if mmr and pool else pool[:room]
        for pin in pins:
            row.insert(min(pin.slot - 1, len(row)), (pin.position, float("nan"), f"pin:merchandising:row{pin.rule}"))
        for slot, (position, score, reason) in enumerate(row, start=1):
            used.add(position)
            self.rows.append((user_id, section.kind, title, slot, self.catalogue.item_ids[position], score, reason))
        return len(row)


def run_homepage(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    settings = config.homepage
    edges = pd.read_parquet(require(run.edges, "etl"))
    interactions = pd.read_parquet(require(run.interactions, "etl"))
    if schema.LAST_TS not in interactions.columns:  # e.g. the lightgcn format: pairs without time or event type
        stats = {"skipped": "the input has no timestamps or event types (lightgcn format): no homepage"}
        log.info("homepage: %s", stats["skipped"])
        write_json(run.homepage_stats, stats)
        return stats
    user_index = pd.read_parquet(require(run.user_index, "etl"))
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    user_emb, item_emb = load_embeddings(run)
    etl = read_json(require(run.etl_stats, "etl"))
    ref_time = pd.Timestamp(etl.get("reference_time") or interactions[schema.LAST_TS].max())
    catalogue = _catalogue(run, interactions, item_index, edges, ref_time, settings)
    position_of = catalogue.position()
    interactions["pos"] = interactions[schema.ITEM].map(position_of)
    device = backend.torch_device

    # model candidates (ensemble-aware scorer), as catalogue positions
    model_pos = np.full(item_emb.shape[0], -1, dtype=np.int64)
    model_pos[catalogue.model_index[catalogue.model_index >= 0]] = np.flatnonzero(catalogue.model_index >= 0)
    k = min(settings.candidates, item_emb.shape[0])
    cand_items, cand_scores = top_k(load_scorer(run, edges, device), torch.arange(user_emb.shape[0]), k, None,
                                    config.rank.batch_size, device)
    cand_pos = model_pos[cand_items.numpy()]
    cand_scores = cand_scores.numpy()

    # item-item neighbours by cosine of item embeddings, for the anchors we need
    normed = F.normalize(item_emb, dim=1)
    viewed = interactions[interactions.get(schema.count_column("view"), interactions[schema.WEIGHT]) > 0]
    last_viewed = viewed.sort_values(schema.LAST_TS).groupby(schema.USER).tail(1).set_index(schema.USER)["pos"]
    anchors = np.unique([p for p in last_viewed.to_numpy() if catalogue.model_index[p] >= 0])
    neighbours: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if anchors.size:
        anchor_rows = torch.from_numpy(catalogue.model_index[anchors])
        sims = normed[anchor_rows] @ normed.T
        sims[torch.arange(anchors.size), anchor_rows] = -torch.inf
        values, idx = torch.topk(sims, min(settings.candidates, item_emb.shape[0] - 1), dim=1)
        for a, row_v, row_i in zip(anchors.tolist(), values.numpy(), idx.numpy(), strict=True):
            neighbours[a] = (model_pos[row_i], row_v)

    # trending per category, new arrivals and their inductive vectors
    by_trend = np.argsort(-catalogue.trending, kind="stable")
    trending_by_category = {c: by_trend[catalogue.category[by_trend] == c] for c in np.unique(catalogue.category)}
    created = pd.to_datetime(catalogue.created_at)
    new_positions = np.flatnonzero(np.asarray(created >= ref_time - pd.Timedelta(days=settings.new_arrival_days)))
    all_vectors = _inductive_item_vectors(catalogue, item_emb)
    new_vectors = all_vectors[torch.from_numpy(new_positions)]
    new_scores = (user_emb @ new_vectors.T).numpy() if new_positions.size else np.zeros((user_emb.shape[0], 0))
    new_reason = np.where(catalogue.model_index[new_positions] >= 0, "new_arrival:model_score",
                          "new_arrival:cold_start_category_price_band")
    by_popularity = np.argsort(-catalogue.popularity, kind="stable")

    # per-user facts
    purchased_col = schema.count_column("purchase")
    bought = interactions[interactions[purchased_col] > 0] if purchased_col in interactions else interactions.iloc[:0]
    purchased = bought.groupby(schema.USER)["pos"].apply(set).to_dict()
    repeat = set(settings.repeat_purchase_categories)
    again = bought[np.isin(catalogue.category[bought["pos"].to_numpy()], list(repeat))]
    buy_again = again.sort_values(schema.LAST_TS, ascending=False).groupby(schema.USER)["pos"].apply(np.array).to_dict()
    weights = interactions.assign(category=catalogue.category[interactions["pos"].to_numpy()])
    top_category = (weights.groupby([schema.USER, "category"])[schema.WEIGHT].sum().reset_index()
                    .sort_values([schema.USER, schema.WEIGHT, "category"], ascending=[True, False, True])
                    .groupby(schema.USER).head(1).set_index(schema.USER)["category"])
    global_category = pd.Series(catalogue.trending).groupby(catalogue.category).sum().idxmax()
    model_row = dict(zip(user_index[schema.USER], user_index[schema.USER_INDEX], strict=True))

    merchandising = None
    if settings.merchandising:
        merchandising = load_merchandising(settings.merchandising, catalogue.item_ids, catalogue.category,
                                           [section.kind for section in settings.sections], ref_time)
        log.info("merchandising: %s", merchandising.stats)
    builder = PageBuilder(catalogue, settings, F.normalize(all_vectors, dim=1).numpy(), merchandising)
    users = np.sort(interactions[schema.USER].unique())
    for user in users.tolist():
        row = model_row.get(user)
        used: set[int] = set()
        bought_here = purchased.get(user, set())
        for section in settings.sections:
            if section.kind == "for_you":
                sources = [(cand_pos[row], cand_scores[row], "for_you:model_score")] if row is not None else []
                sources.append((by_popularity, catalogue.popularity[by_popularity], "for_you:fallback_popularity"))
                builder.fill(user, section, _title(section), sources, used, bought_here)
            elif section.kind == "because_you_viewed":
                anchor = last_viewed.get(user)
                if anchor is not None and anchor in neighbours:
                    items, sims = neighbours[anchor]
                    reason = f"because_you_viewed:similar_to:{catalogue.item_ids[anchor]}"
                    builder.fill(user, section, _title(section, item_title=catalogue.title[anchor]),
                                 [(items, sims, reason)], used, bought_here)
            elif section.kind == "trending_in_category":
                category = top_category.get(user, global_category)
                reason = ("trending_in_category:user_top_category" if user in top_category.index
                          else "trending_in_category:fallback_global")
                ordered = trending_by_category[category]
                builder.fill(user, section, _title(section, category=category),
                             [(ordered, catalogue.trending[ordered], f"{reason}:{category}")], used, bought_here,
                             category_cap=False)  # the row is one category by definition
            elif section.kind == "new_arrivals" and new_positions.size:
                if row is not None:
                    order = np.argsort(-new_scores[row], kind="stable")
                    source = (new_positions[order], new_scores[row][order], list(new_reason[order]))
                else:
                    order = np.argsort(-catalogue.trending[new_positions], kind="stable")
                    source = (new_positions[order], catalogue.trending[new_positions][order],
                              "new_arrival:fallback_trending")
                builder.fill(user, section, _title(section), [source], used, bought_here)
            elif section.kind == "buy_again" and user in buy_again:
                items = buy_again[user]
                source = (items, np.zeros(items.size), "buy_again:purchased_before")
                builder.fill(user, section, _title(section), [source], used, bought_here, allow_purchased=True,
                             category_cap=False)
    page = pd.DataFrame(builder.rows, columns=HOMEPAGE_COLUMNS)
    write_parquet_dataset(run.homepage, page)
    _write_jsonl(run, page)
    rule_check = check_page_rules(
        page, pd.Series(catalogue.in_stock, index=catalogue.item_ids), pd.Series(catalogue.category,
                                                                                 index=catalogue.item_ids),
        bought[[schema.USER, schema.ITEM]], users, settings)
    if not rule_check["passed"]:
        log.error("homepage: page rules broken: %s", rule_check["violations"])
    rankings = pd.read_parquet(run.rankings) if run.rankings.exists() else None
    stats = {"users": int(page["user_id"].nunique()), "rows": len(page),
             "sections": page.groupby("section").size().to_dict(),
             "cold_users": int(sum(model_row.get(u) is None for u in users.tolist())),
             "rule_check": rule_check,
             "diversity": settings.diversity if settings.diversity == "category_cap"
             else f"mmr(lambda={settings.mmr_lambda})",
             "merchandising": {**merchandising.stats,
                               "pinned_slots": int(page["reason"].str.startswith("pin:").sum()),
                               "boosted_slots": int(page["reason"].str.contains(";boost:", regex=False).sum())}
             if merchandising else None,
             "quality": page_quality(page, rankings, catalogue.item_ids, catalogue.category, catalogue.popularity,
                                     catalogue.model_index, edges, user_index, item_index)}
    write_json(run.homepage_stats, stats)
    log.info("homepage: %d users, %d slots, sections %s", stats["users"], stats["rows"], stats["sections"])
    return stats


def _write_jsonl(run: RunDir, page: pd.DataFrame) -> None:
    """One JSON object per user with the rows in page order (``page`` is grouped by user, sections in order)."""
    def flush(handle: Any, user: Any, sections: list[dict[str, Any]]) -> None:
        handle.write(json.dumps({"user_id": _plain(user), "sections": sections}) + "\n")

    with atomic_path(run.root / "homepage.jsonl") as tmp, open(tmp, "w") as handle:
        user, sections = None, []
        for row in page.itertuples(index=False):
            if row.user_id != user:
                if user is not None:
                    flush(handle, user, sections)
                user, sections = row.user_id, []
            if not sections or sections[-1]["section"] != row.section:
                sections.append({"section": row.section, "title": row.section_title, "items": []})
            sections[-1]["items"].append({"slot": int(row.slot), "item_id": _plain(row.item_id),
                                          "score": _json_score(row.score), "reason": row.reason})
        if user is not None:
            flush(handle, user, sections)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _json_score(score: float) -> float | None:
    """Pinned slots have no model score: NaN in Parquet, null in JSON."""
    return None if math.isnan(score) else round(float(score), 6)
