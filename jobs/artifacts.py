"""Reading an earlier stage's artifacts: every stage loads what it needs from here, so no stage imports another."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from homerank.engine import schema
from homerank.engine.errors import HomerankError
from homerank.engine.graph import BipartiteGraph
from homerank.engine.memory import release_free_memory
from homerank.engine.split import SPLIT
from homerank.gnn.config import ContentConfig
from homerank.gnn.content import ContentInputs, item_features, split_by_graph
from homerank.gnn.metrics import CSRIndex
from homerank.gnn.scorer import ScoreFn, Scorer
from homerank.jobs.rundir import RunDir

if TYPE_CHECKING:  # gnn.train pulls in torch_geometric: seconds of start-up the scoring stages do not need
    from homerank.gnn.train import TrainData

EMBEDDING_COLUMN = "embedding"  # embeddings/*.parquet: the id column, then this fixed_size_list<float32>[d] column
EMBEDDING_METADATA = b"homerank.embeddings"  # Parquet schema metadata key: JSON saying what the vectors are


def require(path: Path, stage: str) -> Path:
    """The artifact path, or a user error saying which stage to run first."""
    if not Path(path).exists():
        raise HomerankError(f"{path}: not found; run the {stage} stage first "
                            f"(`homerank {stage} --out RUN_DIR`, or `homerank run`)")
    return path


# Arrow -> pandas without holding both: each column's Arrow buffers are freed once converted, one block per column
# (at 3 * 10^7 events the 18M interactions were read in 1.2 s instead of 3.3 s)
LEAN_READ = {"self_destruct": True, "split_blocks": True}


def read_parquet_parts(path: str | Path, columns: list[str] | None = None,
                       convert: Callable[[pa.Table], pa.Table] | None = None) -> pd.DataFrame:
    """A Parquet dataset (a file, or a folder of parts read in the dataset's order) as one frame, read part by part:
    each part's ``columns`` (None: all), mapped by ``convert`` (e.g. narrower columns) while still Arrow, converted and
    copied into the frame's columns, which are allocated once for every row. The peak is the frame plus one part,
    where reading the whole dataset at once holds its Arrow table and its frame (at 3 * 10^7 events the homepage's
    interactions: 0.65 GB of frame, 0.9 GB more at the read's peak). Columns of NumPy dtypes are filled in place;
    others (text, categoricals) are concatenated once every part is read."""
    import pyarrow.parquet as pq

    files = pq.ParquetDataset(path).files
    if len(files) <= 1:  # one part: nothing to gain
        table = pq.read_table(path, columns=columns)
        frame = (convert(table) if convert else table).to_pandas(**LEAN_READ)
        del table
        release_free_memory()
        return frame
    total = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    filled: dict[str, np.ndarray] = {}
    pieces: dict[str, list[pd.Series]] = {}
    names: list[str] = []
    offset = 0
    for file in files:
        table = pq.read_table(file, columns=columns)
        part = (convert(table) if convert else table).to_pandas(**LEAN_READ)
        del table
        names = list(part.columns)
        for name in names:
            column = part[name]
            if name in filled and column.dtype != filled[name].dtype:  # a part of another dtype: joined at the end
                pieces[name] = [pd.Series(filled.pop(name)[:offset], name=name)]
            if name not in pieces and isinstance(column.dtype, np.dtype) and column.dtype != object:
                if name not in filled:
                    filled[name] = np.empty(total, dtype=column.dtype)
                filled[name][offset : offset + len(part)] = column.to_numpy()
            else:
                pieces.setdefault(name, []).append(column)
        offset += len(part)
        del part
    frame = pd.DataFrame({name: filled.pop(name) if name in filled else _joined(pieces.pop(name)) for name in names},
                         copy=False)
    release_free_memory()  # the parts' decoded pages
    return frame


def _joined(pieces: list[pd.Series]) -> pd.Series:
    """One column from its parts' pieces: categoricals with the union of their categories, others concatenated."""
    if all(isinstance(piece.dtype, pd.CategoricalDtype) for piece in pieces):
        from pandas.api.types import union_categoricals

        filled = [piece.array for piece in pieces if len(piece)]  # an empty part's categories may differ in dtype
        return pd.Series(union_categoricals(filled) if filled else pieces[0].array, name=pieces[0].name)
    return pd.concat(pieces, ignore_index=True)


def read_edges(run: RunDir, columns: list[str], splits: list[str] | None = None) -> pd.DataFrame:
    """The ETL's ``etl/edges/`` dataset with only ``columns`` (``split`` is added when ``splits`` is given) and, with
    ``splits``, only the rows of those splits (a Parquet row filter: the other rows are never decoded). At 10^7 events
    the stages' four or five columns of twelve are a third of the memory of the whole frame."""
    wanted = list(dict.fromkeys([*columns, *([SPLIT] if splits else [])]))
    filters = [(SPLIT, "in", list(splits))] if splits else None
    edges = pd.read_parquet(require(run.edges, "etl"), columns=wanted, filters=filters, to_pandas_kwargs=LEAN_READ)
    release_free_memory()  # the read's column chunks and filtered copies (at 3 * 10^7 events ~0.4 GiB of heap)
    return edges


def split_index(edges: pd.DataFrame, split: str | list[str], num_users: int, num_items: int) -> CSRIndex:
    """Per-user item lists of one split, or of the union of several (e.g. ``["train", "valid"]``)."""
    part = edges[edges[SPLIT].isin([split] if isinstance(split, str) else split)]
    return CSRIndex.from_pairs(part[schema.USER_INDEX].to_numpy(), part[schema.ITEM_INDEX].to_numpy(), num_users,
                               num_items)


def item_popularity(edges: pd.DataFrame, num_items: int) -> torch.Tensor:
    """Number of training users per item, shape (I,)."""
    train = edges[edges[SPLIT] == "train"]
    return torch.from_numpy(np.bincount(train[schema.ITEM_INDEX].to_numpy(), minlength=num_items).astype(np.float32))


def pair_index(column: pd.Series, num_nodes: int) -> torch.Tensor:
    """A pair column as an owned int32 tensor when every node id fits (N = U + I < 2^31: items are also rows U + i
    of the one table), else int64: the training loop's pair tables, epoch order and batches then take half the
    memory (0.2 GB less at 3 * 10^7 events)."""
    dtype = np.int32 if num_nodes < 2**31 else np.int64
    return torch.from_numpy(np.array(column.to_numpy(), dtype=dtype, copy=True))


def training_data(graph: BipartiteGraph | tuple[int, int, torch.Tensor], edges: pd.DataFrame) -> TrainData:
    """The training pairs, the graph's A_hat and (when the split has any) the validation lists, as the train stage
    and the training bench feed `homerank.gnn.train.train_lightgcn`. ``graph`` may instead be (num_users, num_items,
    A_hat) already made (`BipartiteGraph.adjacency`), so that a caller can drop the graph's (2, 2E) edge index before
    it reads the edges (the train stage: 0.5 GB at 3 * 10^7 events)."""
    from homerank.gnn.train import TrainData

    num_users, num_items, adjacency = ((graph.num_users, graph.num_items, graph.adjacency())
                                       if isinstance(graph, BipartiteGraph) else graph)
    train = edges[edges[SPLIT] == "train"]
    has_valid = bool((edges[SPLIT] == "valid").any())
    return TrainData(
        num_users=num_users,
        num_items=num_items,
        train_users=pair_index(train[schema.USER_INDEX], num_users + num_items),
        train_items=pair_index(train[schema.ITEM_INDEX], num_users + num_items),
        adjacency=adjacency,
        valid=split_index(edges, "valid", num_users, num_items) if has_valid else None,
    )


def content_inputs(run: RunDir, config: ContentConfig, device: torch.device | str = "cpu") -> ContentInputs:
    """The content features (`homerank.gnn.content`) of the graph's items, in item-index order, and of the
    catalogue items the graph does not have, from the ETL's copy of the catalogue (``etl/items.parquet``).

    The catalogue's ids are put in the run's id form first (`homerank.homepage.catalogue.run_item_ids`), so
    ``500079``, ``500079.0`` and ``"500079"`` are one item. A run without a catalogue is a `HomerankError`."""
    from homerank.homepage.catalogue import run_item_ids  # the one catalogue id conversion of the homepage

    if not Path(run.catalogue).exists():
        raise HomerankError(f"{run.catalogue}: not found; train.content.features needs the item catalogue: set "
                            "ingest.catalogue to the catalogue file and run the etl stage again, or set "
                            "train.content.features: []")
    catalogue = pd.read_parquet(run.catalogue)
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    catalogue = catalogue.assign(**{schema.ITEM: run_item_ids(catalogue[schema.ITEM], item_index[schema.ITEM])})
    catalogue = catalogue.drop_duplicates(schema.ITEM).reset_index(drop=True)
    features = item_features(catalogue, config, device)
    return split_by_graph(features, catalogue[schema.ITEM], item_index[schema.ITEM],
                          item_index[schema.ITEM_INDEX].to_numpy())


def load_graph(run: RunDir) -> BipartiteGraph:
    """The graph stage's ``graph/graph.pt``; a file torch cannot load (truncated, corrupt, foreign) or one without
    a graph in it is a one-line `HomerankError` saying to run the graph stage again."""
    path = require(run.graph, "graph")
    try:
        return BipartiteGraph.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - a damaged artifact is the user's to rebuild
        raise HomerankError(f"{path}: not a readable homerank graph ({type(exc).__name__}); run the graph stage "
                            "again (`homerank graph --out RUN_DIR`)") from None


def load_scorer(run: RunDir, device: torch.device | str = "cpu") -> ScoreFn:
    """The run's final scoring function (`homerank.gnn.scorer.Scorer`, as the train stage saved it)."""
    return Scorer.load(require(run.scorer, "train")).score_fn(device)


def load_embeddings(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    """The final user (U, d) and item (I, d) embeddings of the run's scorer."""
    scorer = Scorer.load(require(run.scorer, "train"))
    return scorer.user_embeddings, scorer.item_embeddings


def read_embedding_table(path: Path, id_column: str) -> tuple[pd.Series, np.ndarray]:
    """The ids (original dtype) and the (n, d) float32 vectors of ``embeddings/users.parquet`` or
    ``embeddings/items.parquet`` (rank stage), row for row; a file that is not one is a `HomerankError` saying to
    run the rank stage again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        column = table.column(EMBEDDING_COLUMN).combine_chunks()
        ids = table.select([id_column]).to_pandas()[id_column]
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise HomerankError(f"{path}: not a readable homerank embeddings file ({type(exc).__name__}); run the "
                            "rank stage again (`homerank rank --out RUN_DIR`)") from None
    if not pa.types.is_fixed_size_list(column.type):
        raise HomerankError(f"{path}: column {EMBEDDING_COLUMN!r} is not a fixed-size list; run the rank stage again")
    width = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, vectors.reshape(len(table), width)
