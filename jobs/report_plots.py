"""Figures of the run report (matplotlib, Agg backend): the training curve, the degree distributions of the
training graph, and the homepage's page quality next to the plain top-K baseline. Each function returns PNG
bytes, or None when the run has no data for that figure yet."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUALITY_BARS = ("coverage", "diversity", "gini", "cold_share")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def training_curve(train: dict[str, Any]) -> bytes | None:
    """Loss (left axis) and the early-stopping validation metric (right axis) per epoch."""
    history = train.get("history") or []
    if not history:
        return None
    metric = train["early_stopping_metric"]
    figure, loss_axis = plt.subplots(figsize=(6.4, 3.4))
    epochs = [h["epoch"] for h in history]
    loss_axis.plot(epochs, [h["loss"] for h in history], color="#555", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    scored = [(h["epoch"], h["valid"][metric]) for h in history if metric in (h.get("valid") or {})]
    if scored:
        metric_axis = loss_axis.twinx()
        metric_axis.plot(*zip(*scored, strict=True), "o-", color="#2a6f97", label=f"valid {metric}")
        metric_axis.set_ylabel(f"valid {metric}", color="#2a6f97")
        if train.get("best_epoch"):
            metric_axis.axvline(train["best_epoch"], color="#2a6f97", linestyle=":", linewidth=1)
    loss_axis.set_title("Training curve")
    return _png(figure)


def degree_distributions(graph: dict[str, Any]) -> bytes | None:
    """Nodes per (log-spaced) degree bin for users and items, log-log."""
    sides = [(side, graph.get(f"{side}_degree_histogram")) for side in ("user", "item")]
    sides = [(side, hist) for side, hist in sides if hist and hist.get("counts")]
    if not sides:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    for (side, hist), colour in zip(sides, ("#2a6f97", "#c8553d"), strict=False):
        left = hist["edges"][:-1]
        points = [(x, c) for x, c in zip(left, hist["counts"], strict=True) if c > 0]
        if points:
            axis.plot(*zip(*points, strict=True), "o-", color=colour, label=f"{side}s")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("degree (training edges)")
    axis.set_ylabel("nodes")
    axis.set_title("Degree distributions")
    axis.legend()
    return _png(figure)


def page_quality_bars(quality: dict[str, Any]) -> bytes | None:
    """Coverage, diversity, Gini and cold share: homepage vs the plain top-K rankings."""
    homepage, baseline = quality.get("homepage"), quality.get("top_k_baseline")
    if not homepage:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    positions = range(len(QUALITY_BARS))
    axis.bar([p - 0.2 for p in positions], [homepage[n] for n in QUALITY_BARS], width=0.4, label="homepage",
             color="#2a6f97")
    if baseline:
        axis.bar([p + 0.2 for p in positions], [baseline[n] for n in QUALITY_BARS], width=0.4,
                 label="plain top-K", color="#aaa")
    axis.set_xticks(list(positions), list(QUALITY_BARS))
    axis.set_ylim(0, 1)
    axis.set_title("Page quality: catalogue coverage and concentration")
    axis.legend()
    return _png(figure)


def clicks_by_slot(feedback: dict[str, Any]) -> bytes | None:
    """Click-through rate per slot (position bias), with the impressions per slot on a second axis."""
    rows = [row for row in feedback.get("by_slot") or [] if row.get("ctr") is not None]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    slots = [row["slot"] for row in rows]
    axis.bar(slots, [row["ctr"] for row in rows], color="#2a6f97")
    axis.set_xlabel("slot (position in the row)")
    axis.set_ylabel("click-through rate")
    shown = axis.twinx()
    shown.plot(slots, [row["impressions"] for row in rows], "o-", color="#888", linewidth=1)
    shown.set_ylabel("impressions", color="#888")
    axis.set_title("Clicks by slot (position bias)")
    return _png(figure)
