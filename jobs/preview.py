"""``homerank preview``: one user's homepage as a static HTML page (rows of cards: title, category, price, the
slot's explanation as the shopper would read it, and its machine-readable reason), for a person to look at before a
page ships. A homepage written before explanations existed shows the reason alone."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from homerank.engine.errors import HomerankError
from homerank.jobs.rundir import RunDir

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #f6f6f4; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 20px 0 8px; }
.row { display: flex; gap: 12px; overflow-x: auto; padding-bottom: 6px; }
.card { flex: 0 0 170px; background: #fff; border-radius: 8px; padding: 10px; box-shadow: 0 1px 3px #0002; }
.title { font-weight: 600; font-size: 14px; } .category { color: #666; font-size: 12px; }
.price { margin-top: 6px; font-size: 14px; } .reason { margin-top: 4px; color: #888; font-size: 10px; }
.explanation { margin-top: 6px; color: #2a6f97; font-size: 12px; }
"""


def _lookup_user(page: pd.DataFrame, user: str) -> pd.DataFrame:
    rows = page[page["user_id"].astype(str) == str(user)]
    if rows.empty:
        raise HomerankError(f"--user {user}: no homepage for this user in the run (see homepage.jsonl)")
    return rows


def render_preview(run: RunDir, user: str) -> str:
    if not run.homepage.exists():
        raise HomerankError(f"{run.homepage}: not found; run the homepage stage first (`homerank run`)")
    rows = _lookup_user(pd.read_parquet(run.homepage), user)
    catalogue = pd.read_parquet(run.catalogue) if run.catalogue.exists() else pd.DataFrame({"item_id": []})
    rows = rows.merge(catalogue, on="item_id", how="left")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>homepage of {html.escape(str(user))}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>Homepage preview — user {html.escape(str(user))}</h1>"]
    for (section, title), cards in rows.groupby(["section", "section_title"], sort=False):
        parts.append(f"<section class='section' data-section='{html.escape(section)}'><h2>{html.escape(title)}</h2>"
                     "<div class='row'>")
        for card in cards.sort_values("slot").itertuples():
            price = getattr(card, "price", None)
            price_text = f"{price:.2f}" if isinstance(price, float) and price == price else "—"
            parts.append(
                f"<div class='card' data-item='{html.escape(str(card.item_id))}'>"
                f"<div class='title'>{html.escape(str(getattr(card, 'title', '') or card.item_id))}</div>"
                f"<div class='category'>{html.escape(str(getattr(card, 'category', '') or ''))}</div>"
                f"<div class='price'>{price_text}</div>"
                f"{_explanation(card)}"
                f"<div class='reason'>{html.escape(card.reason)}</div></div>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _explanation(card: object) -> str:
    text = getattr(card, "explanation", None)
    return f"<div class='explanation'>{html.escape(str(text))}</div>" if isinstance(text, str) and text else ""


def write_preview(run: RunDir, user: str, out: Path) -> Path:
    from homerank.jobs.rundir import write_text

    write_text(out, render_preview(run, user))
    return out
