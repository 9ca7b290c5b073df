"""homerank installs one import namespace: a user's own ``jobs/``, ``engine/`` or ``gnn/`` packages never shadow
ours, and nothing named ``engine``, ``gnn`` or ``jobs`` is installed at the top level."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FOREIGN = 'raise ImportError("the user\'s own {name} package was imported instead of homerank\'s")\n'


def _foreign_project(root: Path) -> Path:
    for name in ("jobs", "engine", "gnn", "homepage"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(FOREIGN.format(name=name))
        (root / name / "cli.py").write_text("def main():\n    raise SystemExit('foreign cli')\n")
    return root


def test_import_and_command_line_work_beside_foreign_packages(tmp_path):
    project = _foreign_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(project)}  # the user's folders come first on the path
    # one interpreter (each pays the torch import): ours import beside theirs, then theirs is importable as theirs
    code = ("import homerank, homerank.jobs.cli, homerank.engine.ingest, homerank.gnn.train, homerank.homepage;"
            "print('ok', flush=True); import jobs")
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr  # every homerank module imported
    assert done.returncode != 0 and "the user's own jobs package" in done.stderr  # then `import jobs` is theirs
    for command in ([sys.executable, "-m", "homerank", "--help"],
                    [shutil.which("homerank") or str(Path(sys.executable).parent / "homerank"), "--help"]):
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "homerank" in done.stdout and "foreign" not in done.stdout, done.stderr


def test_no_top_level_engine_gnn_or_jobs_is_installed(tmp_path):
    code = ("import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', '.')];"
            "print([n for n in ('engine', 'gnn', 'jobs', 'homepage') if importlib.util.find_spec(n)])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_etl_stage_does_not_import_torch(tiny_log, tmp_path):
    """The ETL has no model: `homerank etl` on the CPU backend runs without importing torch (~2 s and ~180 MiB of a
    process that may be a cluster's client). The stages with a model import it when they run."""
    code = ("import sys; from homerank.jobs.cli import main;"
            f"rc = main(['etl', '--input', {str(tiny_log / 'events')!r}, '--out', {str(tmp_path / 'run')!r},"
            " '--device', 'cpu', '--quiet']);"
            "print(rc, 'torch' in sys.modules, flush=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout + done.stderr


@pytest.mark.parametrize("stage", ["graph", "evaluate", "rank", "homepage"])
def test_the_stages_after_the_etl_do_not_import_dask(stage):
    """Only the ETL runs on dask: a later stage's module (and the homepage's forked block workers) loads neither
    dask.dataframe (~0.6 s) nor distributed; ids are canonicalised by `homerank.engine.ids`, free of dask."""
    code = (f"import sys, homerank.jobs.stage_{stage};"
            "print([m for m in ('dask.dataframe', 'distributed') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
