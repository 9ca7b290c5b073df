"""The job configuration: one YAML file, validated, with CLI overrides; the resolved version is written to
``config.yaml`` in every run directory."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from homerank.engine.config import (
    GraphConfig,
    IngestConfig,
    InteractionConfig,
    ProfilesConfig,
    SplitConfig,
    StrictModel,
)
from homerank.engine.errors import HomerankError
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.homepage.config import HomepageConfig


class ClusterConfig(StrictModel):
    """Where dask runs: a scheduler address for a real cluster, else a local cluster on this machine."""

    address: str | None = Field(None, description="dask scheduler address, e.g. tcp://10.0.0.5:8786")
    n_workers: int | None = Field(
        None, ge=1, description="local cluster: workers. None: one process per core (processes), or one worker "
        "with a thread per core, at most 8 (threads; `homerank.engine.backend.default_workers`)")
    threads_per_worker: int | None = Field(
        None, ge=1, description="local cluster: threads per worker. None: see n_workers when that is None too, else "
        "dask's choice (the cores / n_workers)")
    processes: bool | Literal["auto"] = Field(
        "auto", description="local cluster: worker processes (true) or threads of one process (false; the fastest "
        "for small logs: no worker process to start). 'auto': threads, unless the input log would take more than "
        "1 GiB or half the machine's memory in one process (about 15x its Parquet bytes, 3x its CSV bytes, measured "
        "at 10^7 events): then worker processes with p2p shuffle, bounded memory and spilling, and the job's own "
        "process holds only small tables (homerank.jobs.cluster.choose_processes)"
    )
    memory_limit: str | None = Field(
        None, description="local cluster: memory limit per worker ('4GiB', 0.5 = half the machine's memory); above "
        "dask's thresholds (60%/70% of it) a worker spills its held partitions to local_directory and pauses at 80%. "
        "None: dask's default (the machine's memory / workers)"
    )
    local_directory: str | None = Field(
        None, description="local cluster: where workers spill partitions and shuffle files (a fast local disk with "
        "room for the log). None: dask's temporary directory"
    )
    rmm_pool_size: str | None = Field(
        "auto", description="GPU backend (LocalCUDACluster): RMM memory pool per GPU ('24GiB', or 'auto' = 80% of "
        "the device's memory); None: no pool"
    )
    cudf_spill: bool = Field(
        True, description="GPU backend: cuDF's own device-to-host spilling (buffer by buffer, recommended by "
        "dask-cuda for dataframe ETL) instead of dask-cuda's whole-partition spilling"
    )
    shuffle: Literal["auto", "tasks", "p2p", "disk"] = Field(
        "auto", description="how dask moves rows between partitions (the ETL's one shuffle by user): 'tasks' keeps "
        "them in memory as task results (cheapest when the workers are threads of one process), 'p2p' streams them "
        "between worker processes with bounded memory and spilling to disk (for logs larger than memory), 'disk' "
        "through local files; 'auto': tasks for a local threaded cluster, p2p otherwise"
    )
    intermediates: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where the ETL keeps the frames it reads again (clean events, events by user, all-time "
        "edges): 'memory' persists them on the workers (spilling above dask's thresholds), 'disk' writes them once as "
        "Parquet in the run's staging folder and streams every later pass from the files (logs larger than the "
        "workers' memory: nothing is held between passes, a restarted worker re-reads files); 'auto': disk when the "
        "events' estimated size passes a fifth of the workers' total memory limit (homerank.engine.intermediates)"
    )
    start_method: Literal["auto", "forkserver", "spawn"] = Field(
        "auto", description="local cluster of worker processes: how they start. 'auto': forkserver on Linux (one "
        "server process imports the worker modules once and every worker is forked from it, ready at once; stopping "
        "takes ~0.03 s instead of ~0.4 s), spawn elsewhere (each worker a fresh interpreter that imports everything "
        "again) (homerank.engine.worker_processes)"
    )
    dashboard_address: str = Field(
        "127.0.0.1:0", description="local cluster: where the dask dashboard listens (localhost, a free port by "
        "default; the link is logged)"
    )


class RankConfig(StrictModel):
    k: int = Field(20, ge=1, description="items per user in rankings/")
    exclude_event_types: list[str] = Field(
        default_factory=lambda: ["purchase"], description="items a user had these events on are never ranked"
    )
    batch_size: int = Field(4096, ge=1, description="users scored per (B, I) matrix product")
    block_users: int = Field(
        50_000, ge=1, description="users per block of the rank stage: each block is ranked in one vectorised "
        "pass and written as its own rankings/part-NNNNN.parquet (memory grows with block_users * k rows)"
    )
    index_min_items: int = Field(
        100_000, ge=0, description="from this many items on, model users are ranked through the faiss item index "
        "(embeddings/items.faiss): rank.index_overfetch * k candidates per user, re-scored exactly by the scorer; "
        "below it every item is scored (0: always through the index)"
    )
    on_cluster: bool = Field(
        False, description="rank the blocks as tasks on the dask cluster of `cluster` (cluster.address, or a local "
        "cluster): each worker loads the run's scorer and exclusions once and writes its blocks' parts itself; the "
        "client cuts the blocks from the user ids and publishes the dataset. False: every block in this process"
    )
    index_overfetch: int = Field(4, ge=1, description="candidates fetched from the item index per wanted item")
    index_exact_items: int = Field(
        50_000, ge=0, description="up to this many items the item index is exact (faiss IndexFlatIP), above it "
        "approximate (HNSW)"
    )


class GatesConfig(StrictModel):
    """Data-quality gates checked after ETL; a failing gate stops the job before training."""

    max_quarantined_share: float | None = Field(
        0.05, ge=0, le=1, description="stop when more than this share of input rows is quarantined"
    )
    max_edge_change: float | None = Field(
        None, ge=0, description="stop when training edges change by more than this share vs the previous ETL "
        "in the same run directory (e.g. 0.3)"
    )
    min_train_edges: int = Field(1, ge=0, description="stop when fewer training edges remain")


class WarmStartConfig(StrictModel):
    """An incremental run (`homerank.jobs.warm_start`): the ETL extends the previous run's id maps (its users and
    items keep their indices, new ones are appended) and training starts from its final layer-0 embeddings."""

    previous_run: str | None = Field(
        None, description="run directory to warm-start from (its user_index.parquet, item_index.parquet and "
        "checkpoints/best.pt); null = a cold run"
    )
    epochs: int | None = Field(
        10, ge=1, description="maximum epochs of a warm-started training, at most train.epochs (early stopping may "
        "end sooner); null = train.epochs"
    )
    lr_factor: float = Field(
        0.4, gt=0, le=1, description="a warm-started training's Adam learning rate is train.lr x lr_factor: it starts "
        "from trained embeddings and takes smaller steps (on the demo loop, train.lr 0.05 plateaued 1% below the "
        "cold retrain's best validation NDCG@20, 0.02 passed it; bench/results/warm_start/)"
    )


SEED_LIMIT = 2**32  # numpy's generators take seeds in [0, 2**32); torch's take them too


class JobConfig(StrictModel):
    seed: int = Field(42, ge=0, lt=SEED_LIMIT, description="random seed of every stage, in [0, 2**32)")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    interactions: InteractionConfig = Field(default_factory=InteractionConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    homepage: HomepageConfig = Field(default_factory=HomepageConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)

    @model_validator(mode="after")
    def _pseudonymise_needs_raw_ids(self) -> JobConfig:
        # the lightgcn reader takes train.txt/test.txt ids as they are: pseudonymisation would be silently skipped
        if self.ingest.pseudonymise_user_ids and self.ingest.format == "lightgcn":
            raise PydanticCustomError(
                "pseudonymise_lightgcn",
                "ingest.pseudonymise_user_ids: true cannot be used with ingest.format: lightgcn (--input-format "
                "lightgcn), which stores the user ids of train.txt/test.txt unchanged; pseudonymise them before "
                "writing those files and set ingest.pseudonymise_user_ids: false, or give a Parquet/CSV log",
            )
        return self


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    parts = [str(part) for part in first["loc"]]
    if len(parts) > 1 and parts[-1] in ("int", "float"):  # pydantic names the member of `int | float` it tried
        parts.pop()
    location = ".".join(parts) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {location}: {message}"


def parse_config(data: dict[str, Any] | None, source: str = "config") -> JobConfig:
    try:
        return JobConfig.model_validate(data or {})
    except ValidationError as exc:
        raise HomerankError(_format_error(source, exc)) from None


PRESET_PREFIX = "preset:"


def list_presets() -> dict[str, str]:
    """The presets shipped in ``homerank/presets/``: name -> the first comment line of its YAML file."""
    presets = {}
    for entry in sorted(resources.files("homerank.presets").iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".yaml"):
            first = next(iter(entry.read_text().splitlines()), "")
            presets[entry.name.removesuffix(".yaml")] = first.lstrip("#").strip() if first.startswith("#") else ""
    return presets


def preset_path(name: str) -> Traversable:
    """The YAML file of the shipped preset ``name`` (``--config preset:NAME``); an unknown name is a user error
    that lists the known ones."""
    known = list_presets()
    if name not in known:
        choices = ", ".join(PRESET_PREFIX + known_name for known_name in known)
        raise HomerankError(f"{PRESET_PREFIX}{name}: unknown preset (known: {choices})")
    return resources.files("homerank.presets") / f"{name}.yaml"


def load_config(path: str | Path | None) -> JobConfig:
    """Read and validate a YAML config (safe loader): a file, or ``preset:NAME`` for a preset shipped with the
    package (`list_presets`). ``None`` gives the defaults."""
    if path is None:
        return JobConfig()
    if isinstance(path, str) and path.startswith(PRESET_PREFIX):
        name = path.removeprefix(PRESET_PREFIX)
        return _parse_yaml(preset_path(name).read_text(), f"{PRESET_PREFIX}{name}")
    file = Path(path)
    if not file.is_file():
        raise HomerankError(f"{file}: config file not found")
    return _parse_yaml(file.read_text(), str(file))


def _parse_yaml(text: str, source: str) -> JobConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise HomerankError(f"{source}: not valid YAML{where}") from None
    if data is not None and not isinstance(data, dict):
        raise HomerankError(f"{source}: the config must be a mapping of sections (got {type(data).__name__})")
    return parse_config(data, source)


def with_overrides(config: JobConfig, **overrides: Any) -> JobConfig:
    """Apply CLI overrides of top-level keys (None means "not given")."""
    data = config.model_dump()
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return parse_config(data, "command line")


def apply_dotted(config: JobConfig, overrides: Mapping[str, Any], source: str = "overrides") -> JobConfig:
    """Set ``section.key`` (any depth, e.g. ``train.linear_filter.enabled``) to a value and validate the whole
    config again, exactly as the YAML file is validated.

    >>> apply_dotted(JobConfig(), {"train.epochs": 10}).train.epochs
    10
    """
    data = config.model_dump()
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(parts):
            raise HomerankError(f"{source}: {dotted!r}: expected a dotted key such as train.epochs")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise HomerankError(f"{source}: {dotted}: {where!r} is not a config section")
            node = child
        if isinstance(node, dict) and parts[-1] not in node:
            raise HomerankError(f"{source}: {dotted}: unknown key")
        node[parts[-1]] = value
    return parse_config(data, source)


def parse_set_option(text: str) -> tuple[str, Any]:
    """``section.key=value`` from ``--set``; the value is read as YAML (``10``, ``0.5``, ``true``, ``[1, 2]``,
    ``null``), so it gets the same types as in a config file."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise HomerankError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise HomerankError(f"--set {text!r}: the value is not valid YAML") from None
    return key.strip(), value


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
