"""The row builder: fills one user's rows, in section order, under the page rules, the per-row diversity
setting and the merchandising rules.

While a row fills: an item appears once per page, out-of-stock items never appear, purchased items only in
rows that may show them (``SECTION_KINDS[kind].shows_purchased``), and a pinned item only in its pinned slot.
Per-row diversity, for kinds with ``category_cap`` in the registry, is either a cap of ``max_per_category``
items per category (``diversity: category_cap``) or maximal marginal relevance over unit item vectors
(``diversity: mmr``), picking from a pool of ``slots x mmr_pool_factor`` candidates:

    next = argmax_{i not chosen} lambda * rel(i) - (1 - lambda) * max_{j chosen} cos(v_i, v_j),
    rel(i) = 1 - rank(i) / |pool|

Boosts re-rank the head of a source (its first ``candidates`` items) by z(score) + boost, with z the score
standardised over that head; pins then take their slots. A slot's reason ends in ``;boost:+w`` when a boost
moved it, and a pinned slot's reason is ``pin:merchandising:rowN`` (N = the rule's row in the file).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from homerank.homepage.catalogue import Catalogue
from homerank.homepage.config import HomepageConfig, SectionConfig
from homerank.homepage.merchandising import Merchandising
from homerank.homepage.sections import SECTION_KINDS, Source

PAGE_COLUMNS = ["user_id", "section", "section_title", "slot", "item_id", "score", "reason"]  # what rows are built with
OUTPUT_COLUMNS = [*PAGE_COLUMNS, "explanation"]  # the homepage's output: each slot's sentence (homepage.explain) added


class PageBuilder:
    """Fills users' rows one at a time and keeps every slot in ``rows`` (tuples in ``PAGE_COLUMNS`` order).
    ``vectors`` are unit-norm item vectors by catalogue position, shape (C, d), used by MMR."""

    def __init__(self, catalogue: Catalogue, settings: HomepageConfig, vectors: np.ndarray,
                 merchandising: Merchandising | None = None) -> None:
        self.catalogue = catalogue
        self.settings = settings
        self.vectors = vectors
        self.merchandising = merchandising or Merchandising()
        self.reserved = self.merchandising.pinned_positions  # pinned items appear only in their pinned slot
        self.rows: list[tuple] = []

    def _boosted(self, section: str, candidates: np.ndarray, scores: np.ndarray, reasons: list[str] | str
                 ) -> Source:
        """Re-rank the head of a source by z(score) + boost (see homepage.merchandising); boosted slots say so."""
        boost = self.merchandising.boost_for(section)
        if boost is None:
            return candidates, scores, reasons
        head = min(candidates.size, self.settings.candidates)
        lift = boost[candidates[:head]]
        if not lift.any():
            return candidates, scores, reasons
        standard = scores[:head] - scores[:head].mean()
        standard = standard / (standard.std() or 1.0)
        order = np.argsort(-(standard + lift), kind="stable")
        full = [reasons] * candidates.size if isinstance(reasons, str) else list(reasons)
        head_reasons = [f"{full[i]};boost:{lift[i]:+g}" if lift[i] else full[i] for i in order.tolist()]
        return (np.concatenate([candidates[:head][order], candidates[head:]]),
                np.concatenate([scores[:head][order], scores[head:]]), head_reasons + full[head:])

    def _mmr(self, pool: list[tuple[int, float, str]], room: int) -> list[tuple[int, float, str]]:
        """Maximal marginal relevance over the pool (in relevance order): repeatedly take the item maximising
        lambda * rel(i) - (1 - lambda) * max_{j chosen} cos(v_i, v_j), with rel = 1 - rank / |pool|."""
        trade_off = self.settings.mmr_lambda
        positions = np.array([p for p, _, _ in pool])
        relevance = 1.0 - np.arange(len(pool)) / len(pool)
        vectors = self.vectors[positions]
        closest = np.full(len(pool), -np.inf)
        taken = np.zeros(len(pool), dtype=bool)
        chosen: list[int] = []
        for _ in range(min(room, len(pool))):
            redundancy = np.where(np.isfinite(closest), closest, 0.0)
            gain = np.where(taken, -np.inf, trade_off * relevance - (1 - trade_off) * redundancy)
            best = int(np.argmax(gain))
            chosen.append(best)
            taken[best] = True
            closest = np.maximum(closest, vectors @ vectors[best])
        return [pool[i] for i in chosen]

    def fill(self, user_id: Any, section: SectionConfig, title: str, sources: list[Source], used: set[int],
             purchased: set[int]) -> int:
        """Take items from ``sources`` (positions, scores, reasons), in order, until the row is full; active
        pins of this section then take their slots. ``used`` (positions already on the page) grows with the
        row; ``purchased`` are the user's bought positions. Returns the number of slots filled."""
        kind = SECTION_KINDS[section.kind]

        def allowed(position: int) -> bool:
            return (position not in used and bool(self.catalogue.in_stock[position])
                    and (kind.shows_purchased or position not in purchased))

        pins = [p for p in self.merchandising.pins_for(section.kind) if allowed(p.position)]
        room = section.slots - len(pins)
        mmr = self.settings.diversity == "mmr" and kind.category_cap
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
                if kind.category_cap and not mmr:
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
