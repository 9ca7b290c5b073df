"""The HTML preview, rendered in a real headless Chromium (Debian's package, installed when absent)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from homerank.jobs.cli import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            pass
        found = shutil.which("chromium")
    if not found:
        pytest.skip("Debian chromium is not installed and could not be installed (apt-get chromium)")
    return found


@pytest.mark.slow
def test_preview_renders_rows_and_cards_in_headless_chromium(homepage_run, tmp_path):
    run, _ = homepage_run
    page = pd.read_parquet(run / "homepage")
    user = page["user_id"].iloc[0]
    expected = page[page["user_id"] == user]
    out = tmp_path / "page.html"
    assert main(["preview", "--out", str(run), "--user", str(user), "--html", str(out)]) == 0
    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert len(re.findall(r"<section class=\"section\"", dom)) == expected["section"].nunique()
    assert len(re.findall(r"<div class=\"card\"", dom)) == len(expected)
    for title in expected["section_title"].unique():
        assert title.replace("&", "&amp;") in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "preview.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,1400",
                    out.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_preview_of_unknown_user_is_a_user_error(homepage_run, capsys):
    run, _ = homepage_run
    assert main(["preview", "--out", str(run), "--user", "no-such-user"]) == 2
    assert "no-such-user" in capsys.readouterr().err


def first_user(run: Path) -> str:
    return str(pd.read_parquet(run / "homepage")["user_id"].iloc[0])


def test_preview_writes_to_the_run_directory_by_default(homepage_run, tmp_path, capsys):
    """``--out`` is the run directory, as in every other command; the page goes to RUN/preview/USER.html."""
    source, _ = homepage_run
    run = tmp_path / "run"  # a copy: the shared run directory stays as the pipeline left it
    shutil.copytree(source / "homepage", run / "homepage")
    shutil.copytree(source / "etl", run / "etl", ignore=shutil.ignore_patterns("*edges*", "*interactions*"))
    user = first_user(run)
    assert main(["preview", "--out", str(run), "--user", user]) == 0
    page = run / "preview" / f"{user}.html"
    assert page.exists() and str(page) in capsys.readouterr().out
    assert "<section" in page.read_text()


def test_deprecated_run_flag_still_works_with_a_warning(homepage_run, tmp_path, capsys):
    """Old scripts: ``--run RUN --out FILE`` (``--out`` was then the HTML file)."""
    run, _ = homepage_run
    out = tmp_path / "old.html"
    assert main(["preview", "--run", str(run), "--user", first_user(run), "--out", str(out)]) == 0
    assert out.exists() and "<section" in out.read_text()
    assert "deprecated" in capsys.readouterr().out  # the log warning (rich prints to stdout)
    with pytest.raises(SystemExit):
        main(["preview", "--help"])
    shown = capsys.readouterr().out
    assert "--html" in shown and "--run" not in shown  # the alias is hidden from --help


@pytest.mark.parametrize("args,fragment", [
    (["--user", "u"], "--out RUN is required"),
    (["--run", "r", "--out", "r", "--html", "f.html", "--user", "u"], "--run is a deprecated alias of --out"),
])
def test_preview_flag_mistakes_are_user_errors(args, fragment, capsys):
    assert main(["preview", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_html_report_shows_metrics_and_plots_in_headless_chromium(homepage_run, tmp_path):
    run, _ = homepage_run
    report = (run / "report.html").read_text()
    # three figures, embedded so the file stands alone; the Markdown report links the same PNGs
    assert report.count("data:image/png;base64,") == 3
    markdown_report = (run / "report.md").read_text()
    for name in ("training_curve", "degree_distributions", "page_quality"):
        assert f"(report/{name}.png)" in markdown_report and (run / "report" / f"{name}.png").stat().st_size > 5_000
    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", (run / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Test metrics" in dom and "plain top-K" in dom and dom.count("<table>") >= 5
    assert dom.count("<img ") == 3
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,3000",
                    (run / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
