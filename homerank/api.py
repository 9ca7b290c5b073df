"""The Python API: run the whole job from a notebook or a pipeline, and open a finished run to read its results
and ask it for recommendations without retraining.

    import homerank

    run = homerank.run(events_frame, out="runs/nb", items=catalogue_frame, **{"train.epochs": 10})
    run.metrics["test"]["recall@20"]
    run.recommend([1000017, 1000042], k=10)        # from the saved scorer; unknown users get popularity

Errors a user can cause raise `homerank.HomerankError` (the command line turns the same errors into exit status 2,
or 3 for a failed data-quality gate).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from homerank.engine import schema
from homerank.engine.errors import HomerankError
from homerank.jobs.config import JobConfig, apply_dotted, load_config, parse_config
from homerank.jobs.hygiene import quiet_warnings, run_log
from homerank.jobs.lock import run_lock
from homerank.jobs.rundir import RunDir, read_json, write_parquet

EventsInput = Any  # str | os.PathLike | pandas.DataFrame | dask.dataframe.DataFrame | cudf.DataFrame


class Embeddings(NamedTuple):
    """Final embeddings keyed by the original ids: ``users`` (U rows, index user_id) and ``items`` (I rows, index
    item_id), one float32 column per dimension (0..d-1), read from the rank stage's ``embeddings/users.parquet``
    and ``embeddings/items.parquet`` (rows in the files' order: items row j is row j of ``embeddings/items.faiss``).
    """

    users: pd.DataFrame
    items: pd.DataFrame


def run(events: EventsInput, *, out: str | os.PathLike[str], config: str | os.PathLike[str] | Mapping | JobConfig |
        None = None, items: str | os.PathLike[str] | pd.DataFrame | None = None, device: str = "auto",
        resume: bool = False, progress: bool = True, **overrides: Any) -> Run:
    """Run the whole pipeline (etl, graph, train, evaluate, rank, homepage) into the run directory ``out``.

    Args:
        events: the behaviour log: a path (Parquet/CSV file, folder or glob; a lightgcn folder with
            ``config="preset:recipe"`` or ``ingest.format="lightgcn"``), a list of such paths read as one log (the
            last log and the feedback on its homepage, with ``**{"warm_start.previous_run": "runs/demo"}``), or a
            frame (pandas, dask or, on the GPU
            backend, cuDF) with columns user_id, item_id, event_type, timestamp [, session_id, value]. A frame is
            written to ``out/input/events/`` as Parquet first, so the run can be resumed and audited.
        out: the run directory (created if missing).
        config: a YAML path, ``"preset:NAME"``, a mapping of sections, a `JobConfig`, or None for the defaults.
        items: the optional item catalogue, a path or a pandas frame (written to ``out/input/items.parquet``).
        device: ``auto``, ``cpu`` or ``gpu``.
        resume: skip stages whose inputs and settings are unchanged (as ``homerank run --resume``).
        progress: show progress bars.
        **overrides: dotted config keys, e.g. ``**{"train.epochs": 10, "rank.k": 50}``.

    Returns:
        the finished `Run`.

    Example::

        run = homerank.run("logs/2026-11-25/", out="runs/today", device="cpu", **{"train.epochs": 10})
    """
    from homerank.engine.backend import resolve_backend
    from homerank.jobs.pipeline import run_pipeline

    run_dir = RunDir(Path(out)).ensure()
    settings = _resolve_config(config)
    settings = apply_dotted(settings, {"device": device, **overrides}, source="homerank.run overrides")
    with run_lock(run_dir), quiet_warnings(), run_log(run_dir.log_file):  # one job at a time in ``out``
        if items is not None:
            catalogue = _catalogue_path(items, run_dir)
            settings = apply_dotted(settings, {"ingest.catalogue": str(catalogue)}, source="items")
        input_path = _events_path(events, run_dir)
        backend = resolve_backend(settings.device)
        run_pipeline(input_path, run_dir, settings, backend, show_progress=progress, resume=resume)
    return Run.open(run_dir.root)


def _resolve_config(config: Any) -> JobConfig:
    if config is None:
        return JobConfig()
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config), "config mapping")
    return load_config(config)


def _events_path(events: EventsInput, run_dir: RunDir) -> str | list[str]:
    """A path for the ETL: given as is (a list of paths: read as one log), or the frame written to
    ``RUN/input/events/`` (atomically)."""
    if isinstance(events, (str, os.PathLike)):
        return str(events)
    if isinstance(events, (list, tuple)) and events and all(isinstance(e, (str, os.PathLike)) for e in events):
        return [str(e) for e in events] if len(events) > 1 else str(events[0])
    from homerank.jobs.rundir import atomic_path

    target = run_dir.input_dir / "events"
    module = type(events).__module__.split(".")[0]
    try:
        if isinstance(events, pd.DataFrame) or module == "cudf":
            with atomic_path(target) as tmp:
                tmp.mkdir(parents=True)
                events.to_parquet(tmp / "part-00000.parquet", index=False)
        elif module == "dask" or hasattr(events, "to_parquet") and hasattr(events, "npartitions"):
            with atomic_path(target) as tmp:  # written partition by partition by dask's workers
                events.to_parquet(str(tmp), write_index=False, write_metadata_file=False)
        else:
            raise HomerankError(f"events: expected a path or a pandas/dask/cuDF DataFrame, got {type(events).__name__}")
    except (TypeError, ValueError, OSError) as exc:  # pyarrow cannot store a column (mixed types, objects)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HomerankError(f"events: the frame cannot be written as Parquet ({first}); give each column one "
                            "type") from None
    return str(target)


def _catalogue_path(items: Any, run_dir: RunDir) -> Path:
    if isinstance(items, (str, os.PathLike)):
        return Path(items)
    if not isinstance(items, pd.DataFrame):
        raise HomerankError(f"items: expected a path or a pandas DataFrame, got {type(items).__name__}")
    target = run_dir.input_dir / "items.parquet"
    try:
        write_parquet(target, items)
    except (TypeError, ValueError, OSError) as exc:
        raise HomerankError(f"items: the frame cannot be written as Parquet ({type(exc).__name__})") from None
    return target


class Run:
    """A finished (or partly finished) run directory, read without recomputing anything.

    Example::

        run = homerank.Run.open("runs/demo")
        run.metrics["test"]["ndcg@20"], run.config.train.epochs
        run.rankings().head()                       # user_id, rank, item_id, score
        run.homepage(1000017)                       # that user's page: section, slot, item_id, reason, explanation
        users, items = run.embeddings()             # frames indexed by the original ids
        run.recommend([1000017, 999], k=10)         # source says model / popularity fallback
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._run = RunDir(self.path)

    def __repr__(self) -> str:
        return f"homerank.Run({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """Open a run directory written by `run` or the ``homerank`` command line."""
        run_dir = RunDir(Path(path))
        if not run_dir.root.is_dir():
            raise HomerankError(f"{run_dir.root}: no such run directory")
        if not run_dir.config.exists():
            raise HomerankError(f"{run_dir.root}: not a homerank run directory (no config.yaml)")
        return cls(run_dir.root)

    @functools.cached_property
    def config(self) -> JobConfig:
        """The resolved config the run was made with (``config.yaml``)."""
        return load_config(self._run.config)

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: test (and validation) metrics, the popularity baseline, timings, dataset sizes."""
        return read_json(self._require(self._run.metrics, "evaluate"))

    def rankings(self) -> pd.DataFrame:
        """Top-K per user (``rankings/``): user_id, rank, item_id, score."""
        return pd.read_parquet(self._require(self._run.rankings, "rank"))

    def homepage(self, user_id: Any = None) -> pd.DataFrame:
        """One user's homepage rows in page order (all users' when ``user_id`` is None): user_id, section,
        section_title, slot, item_id, score (NaN for pinned slots), reason (machine-readable, e.g.
        ``for_you:model_score``), explanation (a sentence a shopper can read; added after ``reason``, so a run made
        before explanations lacks the column). An unknown user gets an empty frame."""
        page = pd.read_parquet(self._require(self._run.homepage, "homepage"))
        if user_id is None:
            return page
        return page[page["user_id"].astype(str) == str(user_id)].reset_index(drop=True)

    def embeddings(self) -> Embeddings:
        """The final LightGCN embeddings of the saved scorer, keyed by the original user and item ids, as the rank
        stage wrote them for serving (``embeddings/``). With the LightGCN + GF-CF blend their dot product is only
        the LightGCN part of the score: `recommend` uses the whole scorer."""
        return Embeddings(_keyed(self._require(self._run.user_embeddings, "rank"), schema.USER),
                          _keyed(self._require(self._run.item_embeddings, "rank"), schema.ITEM))

    def recommend(self, user_ids: Iterable[Any] | Any, k: int = 20, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` items for each user, from the saved scorer (no retraining).

        Users in the model get its scores; users whose history the k-core filter dropped, and users the run never
        saw, get the popularity ranking the batch job gives them. With ``exclude_seen`` the items the batch job
        never ranks for a user (``rank.exclude_event_types``, default: purchased) are left out. From
        ``rank.index_min_items`` items on, model users are ranked from the faiss item index's candidates
        (``embeddings/items.faiss``), re-scored exactly, as the rank stage does.

        Returns:
            rows of user_id, rank (1..k), item_id, score, source (``model``, ``popularity:no_training_history``
            or ``popularity:unknown_user``), users in the order asked.
        """
        if k < 1:
            raise HomerankError(f"recommend: k must be >= 1 (got {k})")
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
            user_ids = [user_ids]
        user_ids = list(user_ids)
        if self.config.ingest.pseudonymise_user_ids:  # the run stores keyed pseudonyms, callers know raw ids
            from homerank.engine.privacy import pseudonym_key, pseudonymise

            user_ids = pseudonymise(pd.Series(user_ids, dtype=object), pseudonym_key()).tolist()
        with quiet_warnings():
            return self._recommender.recommend(user_ids, k, exclude_seen)

    @functools.cached_property
    def _recommender(self):  # noqa: ANN202 - built on first use, then kept
        from homerank.engine.backend import resolve_backend
        from homerank.jobs.recommend import Recommender

        backend = resolve_backend(self.config.device)
        return Recommender.for_run(self._run, self.config.rank, backend.torch_device)

    def _require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise HomerankError(f"{path}: not found; the {stage} stage has not run in {self.path}")
        return path


def _keyed(path: Path, id_column: str) -> pd.DataFrame:
    from homerank.jobs.artifacts import read_embedding_table

    ids, vectors = read_embedding_table(path, id_column)
    return pd.DataFrame(vectors, index=pd.Index(ids, name=id_column), columns=list(range(vectors.shape[1])))
