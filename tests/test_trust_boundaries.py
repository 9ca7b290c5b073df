"""Trust boundaries (issue 16, second round): one job per run directory, file names and HTML built from data,
option combinations that would silently drop a privacy setting, and error messages that quote foreign files."""

import json
import os
import signal
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import homerank
from homerank.engine.errors import HomerankError
from homerank.homepage.merchandising import load_merchandising
from homerank.jobs.cli import main
from homerank.jobs.config import JobConfig, dump_config, load_config
from homerank.jobs.lock import run_lock
from homerank.jobs.report import write_report
from homerank.jobs.rundir import RunDir, write_json, write_parquet_dataset


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 8. one job per run directory -------------------------------------------------------------------------------

HOLDER = """
import sys
from homerank.jobs.lock import run_lock
from homerank.jobs.rundir import RunDir
with run_lock(RunDir(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
"""


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock through the lock module, as a running job would."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(timeout=30)


@pytest.fixture(scope="module")
def locked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("locked") / "run"
    holder = hold_lock(run)
    yield run, holder
    release(holder)


def holder_message(run: Path, holder: subprocess.Popen) -> list[str]:
    return [str(run), f"is in use by pid {holder.pid} on host {socket.gethostname()} since ", "wait for"]


@pytest.mark.parametrize("command", ["etl", "graph", "train", "evaluate", "rank", "homepage", "run", "demo"])
def test_a_second_job_on_a_locked_run_directory_exits_2_naming_the_holder(locked_run, command, capsys):
    run, holder = locked_run
    argv = [command, "--out", str(run), "--quiet", "--device", "cpu"]
    if command in ("etl", "run"):
        argv += ["--input", str(run.parent / "no-log-needed")]
    assert main(argv) == 2
    line = one_line_error(capsys)
    for fragment in holder_message(run, holder):
        assert fragment in line, line
    assert not (run / "config.yaml").exists() and not (run / "input").exists()  # nothing written


def test_homerank_run_refuses_a_locked_run_directory(locked_run):
    run, holder = locked_run
    events = pd.DataFrame({"user_id": [1], "item_id": [2], "event_type": ["view"],
                           "timestamp": pd.to_datetime(["2026-01-01"])})
    with pytest.raises(HomerankError, match=f"in use by pid {holder.pid} on host "):
        homerank.run(events, out=run, device="cpu", progress=False)
    assert not (run / "input").exists()  # the frame is not written into a directory another job owns


def test_a_killed_job_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with run_lock(RunDir(run)):  # free again: the OS dropped the dead process's flock
        assert json.loads(RunDir(run).lock.read_text())["pid"] == os.getpid()


# --- 11. file names built from data ---------------------------------------------------------------------------

NASTY_USER = "../../x"
HTML_USER = "<img src=x onerror=alert(1)>"


@pytest.fixture()
def page_run(tmp_path) -> Path:
    """A run directory with only what `preview` and `homerank.Run` read, for users whose ids are hostile."""
    run = RunDir(tmp_path / "run").ensure()
    run.config.write_text(dump_config(JobConfig()))
    write_json(run.metrics, {"test": {}})
    rows = [(user, "for_you", "Recommended <for> you", slot, item, 1.0 / slot, "because <b>you</b>")
            for user in (NASTY_USER, HTML_USER, "1000017") for slot, item in ((1, 10), (2, 11))]
    write_parquet_dataset(run.homepage, pd.DataFrame(
        rows, columns=["user_id", "section", "section_title", "slot", "item_id", "score", "reason"]))
    return run.root


def test_preview_of_a_path_like_user_id_stays_in_the_run_directory(page_run, capsys):
    assert main(["preview", "--out", str(page_run), "--user", NASTY_USER]) == 0
    written = Path(capsys.readouterr().out.split("wrote ", 1)[1].strip())
    assert written.parent == page_run / "preview" and written.is_file()
    assert not (page_run.parent / "x.html").exists()
    assert [p.name for p in (page_run / "preview").iterdir()] == [written.name]


@given(st.text())
def test_preview_file_name_is_always_a_safe_name_under_run_preview(user):
    root = Path("/runs/r")
    path = RunDir(root).preview(user)
    assert path.parent == root / "preview" and path.suffix == ".html"
    stem = path.name.removesuffix(".html")
    assert stem not in ("", ".", "..") and len(path.name) <= 120
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)
    assert os.path.normpath(path).startswith(str(root / "preview") + os.sep)


def test_preview_file_names_keep_plain_ids_and_separate_changed_ones():
    run = RunDir(Path("/runs/r"))
    assert run.preview("1000017").name == "1000017.html"
    assert run.preview(1000017).name == "1000017.html"
    assert run.preview("a/b") != run.preview("a_b") != run.preview("a?b")


# --- 12. HTML from outside never becomes live markup ----------------------------------------------------------

SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "thead", "tbody", "tr",
             "th", "td", "strong", "em", "code", "img"}


class Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_no_live_markup(page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag in SAFE_TAGS, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert tag != "img" or attrs.get("src", "").startswith("data:image/png;base64,"), attrs


def test_report_html_escapes_the_run_directory_name_and_the_data(tmp_path):
    # the name holds a backtick (ends the title's code span today) and a tag; "/" cannot be in one folder name
    root = tmp_path / "a` <script>alert(1)<" / "script> `b"
    run = RunDir(root).ensure()
    reason, section = "<img src=x onerror=alert(3)>", "[deal](javascript:alert(4)) *Shoes* | _x_"
    write_json(run.etl_stats, {
        "input": str(root / "<i>input</i>"), "files": 1, "id_dtype": "string", "reference_time": "2026-01-01",
        "rows": {"in": 10, "kept": 8, "quarantined": 2, "duplicates": 0}, "quarantine_reasons": {reason: 2},
        "users_all_time": 3, "items_all_time": 4, "edges_all_time": 8,
        "kcore": {"rounds": 1, "users": 3, "items": 4, "edges": 8}, "split": {"train": 6, "test": 2},
        "gates": [{"gate": "max_quarantined_share", "value": 0.2, "threshold": 0.05, "passed": False}],
    })
    write_json(run.homepage_stats, {
        "users": 3, "rows": 6, "cold_users": 0, "sections": {section: 6},
        "quality": {"homepage": {"coverage": 0.5, "diversity": 0.5, "novelty_bits": 1.0, "gini": 0.1,
                                 "cold_share": 0.0, "slots": 6}},
    })
    write_report(run)
    report = run.report_html.read_text()
    page = Page(report)
    assert_no_live_markup(page)
    shown = "".join(page.text)
    for outside in (str(root), reason, section):
        assert outside in shown  # shown exactly, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report and "&lt;img src=x onerror=alert(3)&gt;" in report
    assert "<strong>FAIL</strong>" in report  # the report's own Markdown still renders


def test_preview_html_escapes_ids_titles_and_reasons(page_run):
    out = page_run / "page.html"
    assert main(["preview", "--out", str(page_run), "--user", HTML_USER, "--html", str(out)]) == 0
    page = Page(out.read_text())
    assert {tag for tag, _ in page.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "section",
                                             "div"}
    assert HTML_USER in "".join(page.text) and "because <b>you</b>" in "".join(page.text)


# --- 13. pseudonymisation cannot be silently skipped -----------------------------------------------------------

BOTH = ("ingest.pseudonymise_user_ids", "ingest.format: lightgcn")


@pytest.mark.parametrize("extra", [
    ["--input-format", "lightgcn", "--config", "{pseudonymised}"],
    ["--input-format", "lightgcn", "--set", "ingest.pseudonymise_user_ids=true"],
    ["--config", "preset:recipe", "--set", "ingest.pseudonymise_user_ids=true"],
    ["--config", "{both}"],
])
@pytest.mark.parametrize("command", ["etl", "run"])
def test_pseudonymisation_with_the_lightgcn_format_is_refused(tmp_path, capsys, command, extra):
    pseudonymised, both = tmp_path / "p.yaml", tmp_path / "both.yaml"
    pseudonymised.write_text("ingest:\n  pseudonymise_user_ids: true\n")
    both.write_text("ingest:\n  format: lightgcn\n  pseudonymise_user_ids: true\n")
    extra = [arg.format(pseudonymised=pseudonymised, both=both) for arg in extra]
    assert main([command, "--input", str(tmp_path / "gowalla"), "--out", str(tmp_path / "r"), "--quiet",
                 *extra]) == 2
    line = one_line_error(capsys)
    assert all(option in line for option in BOTH), line


def test_pseudonymisation_with_lightgcn_is_refused_by_the_config_and_the_python_api(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("ingest:\n  format: lightgcn\n  pseudonymise_user_ids: true\n")
    with pytest.raises(HomerankError, match=r"both\.yaml: .*ingest\.pseudonymise_user_ids.*ingest\.format: lightgcn"):
        load_config(both)
    with pytest.raises(HomerankError, match=r"ingest\.pseudonymise_user_ids.*ingest\.format: lightgcn"):
        homerank.run(tmp_path / "gowalla", out=tmp_path / "r", config="preset:recipe", progress=False,
                     **{"ingest.pseudonymise_user_ids": True})


def test_set_can_switch_pseudonymisation_off_for_a_lightgcn_input(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text("ingest:\n  pseudonymise_user_ids: true\n")
    assert main(["etl", "--input", str(tmp_path / "gowalla"), "--out", str(tmp_path / "r"), "--quiet", "--config",
                 str(config), "--input-format", "lightgcn", "--set", "ingest.pseudonymise_user_ids=false"]) == 2
    line = one_line_error(capsys)  # the config is accepted; the job stops at the missing folder instead
    assert "gowalla" in line and "pseudonymise" not in line


# --- 15. errors name files, rows and columns, never a foreign file's content ------------------------------------

SECRET = "sk_live_51HsecretToken"
FOREIGN_FILES = {
    "passwd.csv": f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
    "id_key.csv": f"-----BEGIN OPENSSH PRIVATE KEY----- {SECRET}\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    "env.csv": f"rule,item_id,{SECRET}\nboost,10,1\n",
    "ragged.csv": f"rule,item_id\n\"{SECRET},10\n",
}


@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
def test_merchandising_errors_never_quote_the_files_content(tmp_path, name):
    path = tmp_path / name
    path.write_text(FOREIGN_FILES[name])
    with pytest.raises(HomerankError) as error:
        load_merchandising(path, np.array([10]), np.array(["Shoes"]), ["for_you"], pd.Timestamp("2026-01-01"))
    message = str(error.value)
    assert str(path) in message
    assert SECRET not in message and "root:x" not in message and "BEGIN" not in message, message


def test_merchandising_header_errors_name_the_column_by_position(tmp_path):
    path = tmp_path / "merch.parquet"
    pd.DataFrame({"rule": ["boost"], "item_id": ["10"], SECRET: ["1"]}).to_parquet(path)
    with pytest.raises(HomerankError, match=r"merch\.parquet: header column 3 of 3: not a merchandising column") as err:
        load_merchandising(path, np.array([10]), np.array(["Shoes"]), ["for_you"], pd.Timestamp("2026-01-01"))
    assert SECRET not in str(err.value)
    path = tmp_path / "merch.csv"
    path.write_text("Rule,item_id,weight\nboost,10,1\n")
    with pytest.raises(HomerankError, match=r"header column 1 of 3: .*did you mean 'rule'\?"):
        load_merchandising(path, np.array([10]), np.array(["Shoes"]), ["for_you"], pd.Timestamp("2026-01-01"))


def test_the_local_dask_cluster_listens_on_localhost_only():
    """Issue 16, item 14: the scheduler's and the workers' HTTP endpoints (dashboard, /health) bind 127.0.0.1."""
    import ipaddress
    import os

    import psutil
    from distributed import Client

    from homerank.engine.backend import CPU

    def listening() -> set[str]:
        return {c.laddr.ip for c in psutil.Process(os.getpid()).net_connections(kind="inet") if c.status == "LISTEN"}

    before = listening()
    with CPU.local_cluster(1, 1, False) as cluster, Client(cluster):
        during = listening() - before
    assert during and all(ipaddress.ip_address(ip).is_loopback for ip in during), during


def test_ingest_errors_never_quote_a_file_given_by_mistake(tmp_path, capsys):
    """Item 15 in the ingest: a wrong --input (a password file, a key) is named, its content never printed."""
    from homerank.jobs.cli import main

    secret = tmp_path / "passwd.csv"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    code = main(["etl", "--input", str(secret), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and str(secret) in err and "user_id" in err
    assert "root:x" not in err and "/bin/bash" not in err
    key = tmp_path / "key.csv"
    key.write_bytes(b"user_id,item_id,event_type,timestamp\n\xff\xfe-----BEGIN PRIVATE KEY----- 'hunter2'\n")
    code = main(["etl", "--input", str(key), "--out", str(tmp_path / "run2"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2, 3) and "hunter2" not in err and "PRIVATE KEY" not in err
