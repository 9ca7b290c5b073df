"""The run report: what went in, what was dropped and why, the graph, the training curve, the test metrics of
the GNN next to the popularity baseline, and the homepage's page quality. Written as ``report.md`` (figures as
PNG files in ``report/``) and as a self-contained ``report.html`` (the same text, figures embedded). Built
only from the run directory's artifacts, so it can be regenerated at any time."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import markdown

from homerank.jobs.rundir import RunDir, atomic_path, read_json, write_text

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 24px auto; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0ee; } td { text-align: right; } td:first-child { text-align: left; }
code { background: #f3f3f1; padding: 0 3px; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _maybe(path: Path) -> Any:
    return read_json(path) if Path(path).exists() else None


class Markup(str):
    """Markdown written by this module (``**FAIL**``), passed to `_table` as is; every other string is `_text`."""


MARKDOWN_ACTIVE = str.maketrans({c: "\\" + c for c in "\\`*_[]|"})


def _text(value: Any) -> str:
    """Any string that comes from outside this module (the run directory's name, input paths, reasons, category
    and section names, config values, anything read from the artifacts) as inert Markdown text: HTML escaped,
    and the characters that make code spans, emphasis, links/images or table cells backslash-escaped, on one
    line. Rendered by `markdown` it shows exactly the original characters and never becomes a tag or a link."""
    one_line = " ".join(str(value).splitlines())
    return html.escape(one_line).translate(MARKDOWN_ACTIVE)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, Markup):
            return value
        return f"{value:.4f}" if isinstance(value, float) else _text(value)

    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _searches_section(etl: dict[str, Any]) -> list[str]:
    """Searches (a log with a query column) and the last sessions, when the ETL wrote them."""
    searches, last = etl.get("searches"), etl.get("last_session_items")
    if searches is None and last is None:
        return []
    out = ["", "## Searches and sessions", ""]
    if searches is not None:
        searchers = (etl.get("profiles") or {}).get("searchers")
        out += [f"Searches in `etl/searches/` (never edges): {_text(searches['kept'])} kept of "
                f"{_text(searches['rows'])} valid ({_text(searches['duplicates'])} exact duplicates), by "
                f"{_text(searches['users'])} users"
                + (f" ({_text(searchers)} of them with a profile)" if searchers is not None else "")
                + f"; {_text(searches['quarantined'])} search rows quarantined.", ""]
    if last is not None:
        out += [f"Last sessions in `etl/last_session/`: {_text(last)} items viewed, clicked or carted but not bought "
                "in the user's last session (continue_shopping)."]
    return out


def _rows_section(etl: dict[str, Any]) -> list[str]:
    rows = etl["rows"]
    searched = "searches" in rows  # a log with a query column: its search rows are not events
    conserved = rows["in"] == rows["kept"] + rows["quarantined"] + rows["duplicates"] + rows.get("searches", 0)
    law = "in = kept + searches + quarantined + duplicates" if searched else "in = kept + quarantined + duplicates"
    out = [
        "## Ingest",
        "",
        _table(
            ["rows in", "kept", *(["searches"] if searched else []), "quarantined", "duplicates removed"],
            [[rows["in"], rows["kept"], *([rows["searches"]] if searched else []), rows["quarantined"],
              rows["duplicates"]]],
        ),
        "",
        f"Conservation check `{law}`: **{'holds' if conserved else 'FAILS'}**.",
    ]
    if etl.get("quarantine_reasons"):
        out += [
            "",
            "Quarantined rows by reason (files in `quarantine/`):",
            "",
            _table(["reason", "rows"], [[k, v] for k, v in etl["quarantine_reasons"].items()]),
        ]
    kcore = etl["kcore"]
    out += [
        "",
        f"Input files: {_text(etl['files'])} · ids as {_text(etl['id_dtype'])} · reference time "
        f"{_text(etl['reference_time'])}",
        "",
        "## Interactions",
        "",
        _table(
            ["", "users", "items", "edges"],
            [
                ["all time", etl["users_all_time"], etl["items_all_time"], etl["edges_all_time"]],
                [f"k-core ({_text(kcore['rounds'])} rounds)", kcore["users"], kcore["items"], kcore["edges"]],
            ],
        ),
        "",
        "Temporal split (edges): " + ", ".join(f"{_text(k)} {_text(v)}" for k, v in etl["split"].items()),
    ]
    profiles = etl.get("profiles")
    if profiles:
        out += [
            "",
            "## Shopper segments",
            "",
            f"Profiles of {_text(profiles['users'])} users in `etl/profiles/` ({_text(profiles['warm'])} warm, with a "
            f"model embedding; {_text(profiles['cold'])} cold, served by fallbacks). Segments: k-means over "
            "activity, sessions, spend and recency.",
            "",
            _table(
                ["segment", "name", "users", "warm share", "mean events", "mean recency (days)", "mean spend"],
                [[s["segment"], s["name"], s["users"], s["warm_share"], s["mean_events"], s["mean_recency_days"],
                  s["mean_monetary"]] for s in profiles["segments"]],
            ),
        ]
    out += _searches_section(etl)
    if etl.get("gates"):
        out += [
            "",
            "Data-quality gates:",
            "",
            _table(
                ["gate", "value", "threshold", "result"],
                [[g["gate"], g["value"], g["threshold"], "pass" if g["passed"] else Markup("**FAIL**")]
                 for g in etl["gates"]],
            ),
        ]
    return out


def _graph_section(graph: dict[str, Any]) -> list[str]:
    rows = [
        [name, d["min"], d["mean"], d["median"], d["p90"], d["max"]]
        for name, d in (("users", graph["user_degree"]), ("items", graph["item_degree"]))
    ]
    out = [
        "",
        "## Graph (training edges)",
        "",
        f"{_text(graph['users'])} users + {_text(graph['items'])} items, {_text(graph['edges'])} edges, density "
        f"{graph['density']:.2e}, {_text(graph['components'])} connected component(s), largest holds "
        f"{graph['largest_component_share']:.1%} of the nodes; isolated: {_text(graph['isolated_users'])} users, "
        f"{_text(graph['isolated_items'])} items.",
        "",
        _table(["degree", "min", "mean", "median", "p90", "max"], rows),
    ]
    for side in ("user", "item"):
        hist = graph.get(f"{side}_degree_histogram")
        if hist and hist["counts"]:
            bins = [
                f"{a}–{b - 1}" if b - 1 > a else str(a)
                for a, b in zip(hist["edges"][:-1], hist["edges"][1:], strict=True)
            ]
            out += [
                "",
                f"{side.title()} degree distribution:",
                "",
                _table(["degree", "nodes"], [[b, c] for b, c in zip(bins, hist["counts"], strict=True) if c]),
            ]
    return out


def _train_section(train: dict[str, Any]) -> list[str]:
    metric = train["early_stopping_metric"]
    rows = [[h["epoch"], h["loss"], h.get("valid", {}).get(metric, ""), h["seconds"]] for h in train["history"]]
    return [
        "",
        "## Training",
        "",
        f"{_text(train['epochs'])} epochs on {_text(train['device'])} in {train['train_seconds']:.1f} s; best epoch "
        f"{_text(train['best_epoch'])} (validation {_text(metric)} {train['best_valid'] or 0:.4f}); stopped: "
        f"{_text(train['stopped_because'])}.",
        "",
        _table(["epoch", "loss", f"valid {metric}", "seconds"], rows),
    ]


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    test, popularity = metrics["test"], metrics["baselines"]["popularity"]
    errors = metrics.get("test_standard_errors") or {}
    rows = []
    for key, value in test.items():
        base = popularity.get(key, 0.0)
        shown = f"{value:.4f} ± {errors[key]:.4f}" if key in errors else value
        rows.append([key, shown, base, f"{value / base:.2f}x" if base else "—"])
    users = metrics.get("test_users")
    scope = []
    if users and users.get("sampled"):
        scope = ["", f"On a seeded random sample of {_text(users['scored'])} of the {_text(users['with_test_items'])} "
                     "test users (`evaluate.test_users`); ± one standard error of the sample mean. Both models are "
                     "scored on the same users."]
    return [
        "",
        "## Test metrics (full ranking, training items masked)",
        *scope,
        "",
        _table(["metric", "LightGCN", "popularity", "ratio"], rows),
    ]


def _homepage_section(stats: dict[str, Any]) -> list[str]:
    quality = stats["quality"]
    names = ["coverage", "diversity", "novelty_bits", "gini", "cold_share", "slots"]
    baseline = quality.get("top_k_baseline", {})
    rows = [[name, quality["homepage"][name], baseline.get(name, "—")] for name in names]
    accuracy = ", ".join(f"{_text(k)} {v:.4f}" for k, v in quality.get("for_you_accuracy", {}).items() if k != "users")
    lines = [
        "",
        "## Homepage",
        "",
        f"`homepage/` and `homepage.jsonl`: {_text(stats['rows'])} slots for {_text(stats['users'])} users "
        f"({_text(stats['cold_users'])} without a model embedding, served by fallbacks); slots per section: "
        + ", ".join(f"{_text(k)} {_text(v)}" for k, v in stats["sections"].items())
        + "." + _explanation_summary(stats),
        "",
        "Page quality (coverage and Gini over the catalogue; diversity = share of different-category pairs "
        "per page; novelty = mean self-information in bits; cold share = slots holding items the model never "
        "trained on):",
        "",
        _table(["metric", "homepage", "plain top-K (rankings/)"], rows),
        "",
        f"Offline accuracy of the `for_you` row (after the page rules): {accuracy or 'n/a'}.",
    ]
    check = stats.get("rule_check")
    if check:
        broken = {k: v for k, v in check["violations"].items() if v}
        lines += [
            "",
            f"Page rules checked over all {_text(check['users_checked'])} users and {_text(check['slots_checked'])} "
            f"slots: **{'all hold' if check['passed'] else 'BROKEN: ' + _text(broken)}** "
            f"({_text(', '.join(check['violations']))}).",
        ]
    return lines


def _explanation_summary(stats: dict[str, Any]) -> str:
    """One sentence: users served their profile segment's favourites, and the evidence behind the explanations."""
    evidence = stats.get("explanations")
    if not evidence:  # a homepage written before explanations existed
        return ""
    total = sum(evidence.values()) or 1
    shares = ", ".join(f"{_text(kind)} {100 * n / total:.0f}%" for kind, n in
                       sorted(evidence.items(), key=lambda item: (-item[1], item[0])))
    return (f" {_text(stats.get('segment_fallback_users', 0))} users without a model embedding got their profile "
            f"segment's favourites in `for_you`. Each slot's `explanation` rests on (share of slots): {shares}.")


def _warm_start_section(etl: dict[str, Any], train: dict[str, Any] | None) -> list[str]:
    """An incremental run: what it kept of the previous run's id maps and where its layer 0 came from."""
    warm = etl.get("warm_start")
    if not warm:
        return []
    users, items = warm["users"], warm["items"]
    out = ["", "## Warm start", "",
           f"Incremental run from `{_text(warm['previous_run'])}`: its id maps extended, never re-encoded — "
           f"{_text(users['kept'])} users and {_text(items['kept'])} items keep their indices "
           f"({_text(users['without_edges'])} users and {_text(items['without_edges'])} items of them without an edge "
           f"in this k-core), {_text(users['new'])} new users and {_text(items['new'])} new items appended."]
    started = (train or {}).get("warm_start")
    if started:
        out += ["", f"Training started from `{_text(started['checkpoint'])}` (layer 0 of "
                f"{_text(started['users_from_previous'])} users and {_text(started['items_from_previous'])} items; "
                f"new rows random), at most {_text(started['max_epochs'])} epochs"
                + (f" at learning rate {_text(started['lr'])}." if "lr" in started else ".")]
    return out


def _feedback_section(feedback: dict[str, Any]) -> list[str]:
    """Click-through per section and position bias of the previous run's homepage (``feedback/stats.json``)."""
    totals = feedback["totals"]
    kinds = [k for k in totals if k not in ("impressions", "ctr") and any(row.get(k) for row in feedback["by_slot"])]

    def rows(group: str) -> list[list[Any]]:
        return [[row[group], row["impressions"], *(row[k] for k in kinds),
                 row["ctr"] if row["ctr"] is not None else "—"] for row in feedback[f"by_{group}"]]

    header = ["impressions", *kinds, "CTR"]
    bias = feedback.get("position_bias") or {}
    return [
        "", "## Feedback on the previous homepage", "",
        f"`feedback/stats.json`: {_text(feedback['feedback_events'])} events of the feedback log "
        f"({_text(len(feedback['feedback_files']))} file(s) with a `run_id` column) against the "
        f"{_text(totals['impressions'])} impressions of `{_text(feedback['previous_run'])}`; "
        f"{_text(feedback['matched_events'])} match an impression (same user, item and run id), "
        f"{_text(feedback['unmatched_events'])} do not. Click-through rate (CTR) = impressions with a click / "
        f"impressions: **{totals['ctr'] if totals['ctr'] is not None else 0:.4f}** overall.",
        "", "Per section:", "", _table(["section", *header], rows("section")),
        "", "Clicks by slot (position bias: the CTR of slot k over slot 1's, "
        + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in list(bias.items())[:10]) + "):",
        "", _table(["slot", *header], rows("slot")),
        "", "By row (the section's place on the page):", "", _table(["row", *header], rows("row")),
    ]


def _figure(run: RunDir, name: str, title: str, plot: str, data: Any) -> list[str]:
    """Save ``report_plots.<plot>(data)`` as report/NAME.png and return the Markdown that shows it (nothing if
    there is no data). The report is rewritten after every stage: a figure whose data is unchanged since it was
    drawn (a digest of the data beside it, report/NAME.png.sha256) is not drawn again, and matplotlib is imported
    only when a figure is drawn."""
    folder = run.report_figures
    target, digest_file = folder / f"{name}.png", folder / f"{name}.png.sha256"
    digest = hashlib.sha256(json.dumps([plot, data], sort_keys=True, default=str).encode()).hexdigest()
    if target.is_file() and digest_file.is_file() and digest_file.read_text().strip() == digest:
        return ["", f"![{title}](report/{name}.png)"]
    from homerank.jobs import report_plots

    png = getattr(report_plots, plot)(data)
    if png is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(png)
    with atomic_path(digest_file) as tmp:
        tmp.write_text(digest + "\n")
    return ["", f"![{title}](report/{name}.png)"]


def _html(run: RunDir, text: str) -> str:
    """report.md as one HTML file: Markdown tables rendered, figures inlined as data URIs."""
    body = markdown.markdown(text, extensions=["tables"])

    def inline(match: re.Match[str]) -> str:
        path = run.root / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return 'src="data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode() + '"'

    body = re.sub(r'src="(report/[\w.-]+\.png)"', inline, body)
    title = html.escape(f"homerank run report — {run.root}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{HTML_STYLE}</style>"
        f"</head><body>{body}</body></html>"
    )


def write_report(run: RunDir) -> Path:
    parts = [f"# homerank run report — {_text(run.root)}", ""]
    metrics, etl = _maybe(run.metrics), _maybe(run.etl_stats)
    if metrics:
        dataset = ", ".join(f"{_text(v)} {_text(k.replace('_', ' '))}" for k, v in metrics["dataset"].items())
        parts += [
            f"Device: **{_text(metrics['device'])}** · model {_text(metrics.get('model', 'lightgcn'))} · training "
            f"{metrics['train_seconds']:.1f} s · {_text(metrics['epochs'])} epochs · {dataset}"
        ]
    timings = _maybe(run.timings)
    if timings:
        parts += ["", "Stage seconds: " + ", ".join(f"{_text(k)} {v:.1f}" for k, v in timings.items())]
    verdict = _maybe(run.gates)
    if verdict is not None and not verdict.get("accepted", True):  # the newest ETL was refused by a gate
        rejected = _maybe(RunDir(run.etl_rejected).etl_stats)
        parts += ["", "## The newest ETL was refused (**FAIL**)", "",
                  "A data-quality gate failed: the accepted ETL below (if any) stays in use; the refused outputs "
                  "are in `etl.rejected/`, the verdict in `etl/gates.json`."]
        if rejected:
            parts += [""] + _rows_section({**rejected, "gates": verdict["gates"]})
    if etl:
        parts += [""] + _rows_section(etl)
        parts += _warm_start_section(etl, _maybe(run.train_summary))
    feedback = _maybe(run.feedback_stats)
    if feedback:
        parts += _feedback_section(feedback)
        parts += _figure(run, "clicks_by_slot", "Clicks by slot", "clicks_by_slot", feedback)
    graph = _maybe(run.graph_stats)
    if graph:
        parts += _graph_section(graph)
        parts += _figure(run, "degree_distributions", "Degree distributions", "degree_distributions", graph)
    train = _maybe(run.train_summary)
    if train:
        parts += _train_section(train)
        parts += _figure(run, "training_curve", "Training curve", "training_curve", train)
    if metrics:
        parts += _metrics_section(metrics)
    rank = _maybe(run.rank_stats)
    if rank:
        parts += [
            "",
            "## Rankings",
            "",
            f"`rankings/`: {_text(rank['rows'])} rows for {_text(rank['users'])} users (top {_text(rank['k'])}); "
            f"{_text(rank['model_users'])} ranked by the GNN, {_text(rank['popularity_users'])} without training "
            f"history by popularity; {_text(rank['users_with_fewer_than_k'])} users with fewer than K allowed "
            f"items; {_text(rank['excluded_pairs'])} (user, item) pairs excluded.",
        ]
    homepage = _maybe(run.homepage_stats)
    if homepage and "quality" in homepage:
        parts += _homepage_section(homepage)
        parts += _figure(run, "page_quality", "Page quality", "page_quality_bars", homepage["quality"])
    text = "\n".join(parts) + "\n"
    write_text(run.report, text)
    write_text(run.report_html, _html(run, text))
    return run.report
