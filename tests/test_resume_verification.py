"""`run --resume` skips a stage only when every file it reads is unchanged and every output it wrote is intact:
an edited merchandising pin ships, a deleted manifest or a truncated part file reruns its stage and those after it.

One finished run (module scoped) is copied for each check; the checks read the new part of ``logs/homerank.log``.
"""

import hashlib
import json
import os
import shutil

import pandas as pd
import pytest

from homerank.engine.errors import HomerankError
from homerank.jobs.cli import main
from homerank.jobs.config import parse_config
from homerank.jobs.pipeline import STAGES, named_files, stage_fingerprints
from homerank.jobs.rundir import MANIFEST, verify_dataset, write_parquet_dataset
from tests.conftest import homepage_config

HEADER = "rule,item_id,category,weight,section,slot,start,end\n"
EXPIRED, ACTIVE = "2000-01-02", "2999-01-02"  # same length: the edit keeps the file's size


@pytest.fixture(scope="module")
def finished_run(homepage_run, tmp_path_factory):
    """A complete run with a catalogue and a merchandising file holding one long-expired pin: a copy of the
    session's homepage_run (conftest: homepage_config), resumed with the file configured, which
    reruns its homepage stage only."""
    source, tiny_log = homepage_run
    root = tmp_path_factory.mktemp("resume_verification")
    catalogue = pd.read_parquet(tiny_log / "items.parquet")
    events = pd.read_parquet(tiny_log / "events")
    stocked = catalogue.loc[catalogue["in_stock"], "item_id"]
    pinned = int(events.loc[events["item_id"].isin(stocked), "item_id"].value_counts().index[0])
    merch = root / "merch.csv"
    merch.write_text(f"{HEADER}pin,{pinned},,,for_you,1,2000-01-01,{EXPIRED}\n")
    config = homepage_config(root / "c.yaml", tiny_log)
    config.write_text(config.read_text().replace("homepage:\n", f"homepage:\n  merchandising: {merch}\n"))
    run = root / "run"
    shutil.copytree(source, run)
    log_file = run / "logs" / "homerank.log"
    start = len(log_file.read_text())
    assert main(_run_args(tiny_log, run, config, "--resume")) == 0
    text = log_file.read_text()[start:]
    assert _ran(text) == ["homepage"] and _skipped(text) == list(STAGES[:-1])  # the same config up to the homepage
    page = pd.read_parquet(run / "homepage")
    assert not page["reason"].str.startswith("pin:").any()  # the pin has expired: nothing pinned yet
    return run, config, merch, pinned, tiny_log


def _run_args(log, run, config, *extra):
    return ["run", "--input", str(log / "events"), "--out", str(run), "--config", str(config), "--quiet", *extra]


def _resume(finished_run, tmp_path, damage=None):
    """Copy the finished run, let ``damage(run)`` change it, ``run --resume``; returns (run, new log text)."""
    source, config, _, _, log = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    if damage is not None:
        damage(run)
    log_file = run / "logs" / "homerank.log"
    start = len(log_file.read_text())
    assert main(_run_args(log, run, config, "--resume")) == 0
    return run, log_file.read_text()[start:]


def _ran(text: str) -> list[str]:
    return [stage for stage in STAGES if f"stage {stage}: start" in text]


def _skipped(text: str) -> list[str]:
    return [stage for stage in STAGES if f"stage {stage}: up to date" in text]


@pytest.mark.slow
def test_unchanged_run_directory_skips_every_stage(finished_run, tmp_path):
    run, text = _resume(finished_run, tmp_path)
    assert _ran(text) == [] and _skipped(text) == list(STAGES)
    assert "rerun" not in text
    stages = json.loads((run / "logs" / "stages.json").read_text())
    assert all(entry["status"] == "done" for entry in stages.values()) and list(stages) == list(STAGES)


@pytest.mark.slow
def test_edited_merchandising_pin_reruns_homepage_and_ships(finished_run, tmp_path):
    source, config, merch, pinned, log = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    # point the run at a copy of the (still expired) file, so that the shared run's file stays as it is
    edited = tmp_path / "merch.csv"
    shutil.copy2(merch, edited)
    copied_config = tmp_path / "c.yaml"
    copied_config.write_text(config.read_text().replace(str(merch), str(edited)))
    log_file = run / "logs" / "homerank.log"
    start = len(log_file.read_text())
    assert main(_run_args(log, run, copied_config, "--resume")) == 0
    text = log_file.read_text()[start:]
    assert _ran(text) == ["homepage"]  # a new path is a new setting of homepage: only homepage reruns
    assert f"homepage: rerun, {edited} newly configured" in text

    # activate the pin in place, same size, and put the old mtime back (as `cp -p`, `rsync -t` or a restore
    # would): only the file's content tells the edit apart
    before = edited.stat()
    edited.write_text(edited.read_text().replace(EXPIRED, ACTIVE))
    assert edited.stat().st_size == before.st_size
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    start = len(log_file.read_text())
    assert main(_run_args(log, run, copied_config, "--resume")) == 0
    text = log_file.read_text()[start:]
    assert _ran(text) == ["homepage"] and _skipped(text) == list(STAGES[:-1])
    assert f"homepage: rerun, {edited} changed" in text
    page = pd.read_parquet(run / "homepage")
    at_pin = page[page["reason"].str.startswith("pin:merchandising:row1")]
    assert len(at_pin) > 0 and (at_pin["item_id"] == pinned).all()
    assert (at_pin["section"] == "for_you").all() and (at_pin["slot"] == 1).all()
    assert json.loads((run / "homepage_stats.json").read_text())["merchandising"]["active_pins"] == 1


@pytest.mark.slow
def test_deleted_rankings_manifest_reruns_rank_and_homepage(finished_run, tmp_path):
    run, text = _resume(finished_run, tmp_path, lambda run: (run / "rankings" / MANIFEST).unlink())
    assert _ran(text) == ["rank", "homepage"] and _skipped(text) == list(STAGES[:4])
    assert "rank: rerun" in text and MANIFEST in text
    assert "homepage: rerun, rank before it reran" in text
    assert verify_dataset(run / "rankings")["rows"] > 0


@pytest.mark.slow
def test_truncated_homepage_part_reruns_homepage(finished_run, tmp_path):
    def truncate(run):
        part = run / "homepage" / "part-00000.parquet"
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])

    run, text = _resume(finished_run, tmp_path, truncate)
    assert _ran(text) == ["homepage"] and _skipped(text) == list(STAGES[:-1])
    assert "homepage: rerun, homepage/part-00000.parquet: changed since it was written" in text
    verify_dataset(run / "homepage")
    assert len(pd.read_parquet(run / "homepage")) > 0


@pytest.mark.slow
@pytest.mark.parametrize("damage, stage", [
    (lambda run: (run / "quarantine" / "_SUCCESS").unlink(), "etl"),
    (lambda run: (run / "user_index.parquet").write_bytes(b""), "etl"),
    (lambda run: _cut(run / "graph" / "graph.pt"), "graph"),
    (lambda run: (run / "metrics.json").write_text('{"test": '), "evaluate"),
    (lambda run: _cut(run / "homepage.jsonl"), "homepage"),
])
def test_any_broken_output_reruns_its_stage_and_those_after_it(finished_run, tmp_path, damage, stage):
    _, text = _resume(finished_run, tmp_path, damage)
    position = STAGES.index(stage)
    assert _ran(text) == list(STAGES[position:]) and _skipped(text) == list(STAGES[:position])
    assert f"{stage}: rerun, " in text


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 7])


def test_fingerprint_follows_the_content_of_every_file_a_stage_is_configured_with(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    (log / "events.csv").write_text("user_id,item_id,event_type,timestamp\n1,2,view,2026-01-01\n")
    merch = tmp_path / "merch.csv"
    merch.write_text(f"{HEADER}pin,1,,,for_you,1,2000-01-01,{EXPIRED}\n")
    config = parse_config({"homepage": {"merchandising": str(merch)}})
    before = stage_fingerprints(str(log), config)
    stat = merch.stat()
    merch.write_text(merch.read_text().replace(EXPIRED, ACTIVE))
    os.utime(merch, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = stage_fingerprints(str(log), config)
    assert [stage for stage in STAGES if before[stage] != after[stage]] == ["homepage"]
    # a missing file is the stage's own error (it names the option), not the fingerprint's
    merch.unlink()
    assert stage_fingerprints(str(log), config)["homepage"] != after["homepage"]


def test_named_files_finds_any_string_that_names_a_file(tmp_path):
    """The rule that covers a future path option: every string value naming an existing file, at any depth."""
    first, second = tmp_path / "a.csv", tmp_path / "b.parquet"
    first.write_text("x")
    second.write_bytes(b"y")
    settings = {"future": {"option": str(second), "title": "Recommended for you", "folder": str(tmp_path)},
                "lists": [str(first), "bpr", str(tmp_path / "missing.csv"), "x" * 5000, "nul\x00"], "n": 3}
    assert named_files(settings) == [str(second), str(first)]


def _dataset(tmp_path):
    path = tmp_path / "rankings"
    write_parquet_dataset(path, pd.DataFrame({"user_id": [1, 2], "score": [0.5, 0.25]}))
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["../outside.parquet", "sub/../../outside.parquet", "ABSOLUTE", "..", ""])
def test_verify_dataset_refuses_manifest_entries_outside_the_folder(tmp_path, name):
    path = _dataset(tmp_path)
    outside = tmp_path / "outside.parquet"
    pd.DataFrame({"secret": [1]}).to_parquet(outside)
    name = str(outside) if name == "ABSOLUTE" else name
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"rows": 1, "sha256": _sha256(outside)}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(HomerankError, match="not a file name inside"):
        verify_dataset(path)


def test_verify_dataset_refuses_unlisted_parts_and_broken_manifests(tmp_path):
    path = _dataset(tmp_path)
    pd.DataFrame({"user_id": [9], "score": [1.0]}).to_parquet(path / "part-00001.parquet")  # a reader would load it
    with pytest.raises(HomerankError, match="part-00001.parquet: not listed"):
        verify_dataset(path)
    (path / "part-00001.parquet").unlink()
    (path / "part-00000.parquet").unlink()
    with pytest.raises(HomerankError, match="part-00000.parquet: missing"):
        verify_dataset(path)
    for text in ("{", "[]", '{"files": {}}', '{"files": {"part-00000.parquet": "abc"}}'):
        (path / MANIFEST).write_text(text)
        with pytest.raises(HomerankError, match=MANIFEST):
            verify_dataset(path)
