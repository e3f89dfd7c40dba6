"""The embeddings file: one Parquet row per scan, written by ``learner embed``.

Columns (docs/architecture.md, 'Embeddings file'): ``patient_id`` (str), ``visit`` (str),
``visit_order`` (int), ``zone`` (str or null, optional), ``path`` (str or null), ``score``
(float, NaN = unlabelled), ``split`` (str), ``pred_score`` (float, raw score units) and
``embedding`` (list<float32>, length D), ``change_label`` (str or null) when the manifest
had one (the clinician's label of the change from the previous visit), and ``descriptor``
(list<float32>, the scan's input descriptor, :mod:`learner.data.descriptor`; absent for
tabular input and in files written before descriptors existed). Run facts (objective,
seed, score range, higher_is_better, checkpoint) travel as JSON under the schema metadata key
``b"learner"``.

Every write goes to a temporary file beside the target and is renamed on success, so a crash
never leaves a half-written file under the final name.

Example:
    >>> frame = pd.DataFrame({
    ...     "patient_id": ["P1", "P1"], "visit": ["2024-01", "2024-06"], "visit_order": [0, 1],
    ...     "score": [12.0, 15.0], "split": "test", "pred_score": [11.5, 14.2],
    ...     "embedding": [np.array([0.1, 0.3]), np.array([0.2, 0.1])]})
    >>> write_embeddings(frame, "run/embeddings.parquet", {"objective": "mse", "seed": 0})
    >>> frame, meta = read_embeddings("run/embeddings.parquet")
    >>> meta
    {'objective': 'mse', 'seed': 0}
    >>> embedding_matrix(frame)  # (N, D)
    array([[0.1, 0.3],
           [0.2, 0.1]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from learner.errors import DataError
from learner.io import atomic_path

METADATA_KEY = b"learner"

# Columns the downstream evaluation cannot do without; `visit`, `path` and `zone` are
# descriptive (zone is optional by contract, path is null for tabular data).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "visit_order",
    "score",
    "split",
    "pred_score",
    "embedding",
)

# Arrow types of the documented columns; any other column keeps the type Arrow infers.
_STRING_COLUMNS = ("patient_id", "visit", "zone", "path", "split", "change_label")
_ARROW_TYPES: dict[str, pa.DataType] = {
    "patient_id": pa.string(),
    "visit": pa.string(),
    "visit_order": pa.int64(),
    "zone": pa.string(),
    "path": pa.string(),
    "score": pa.float64(),
    "split": pa.string(),
    "change_label": pa.string(),
    "pred_score": pa.float64(),
    "embedding": pa.list_(pa.float32()),
    "descriptor": pa.list_(pa.float32()),
}
# Columns of equal-length float vectors, written as one flat buffer plus offsets.
_VECTOR_COLUMNS = ("embedding", "descriptor")


def embedding_matrix(frame: pd.DataFrame) -> np.ndarray:
    """Stack the ``embedding`` column into one array.

    Args:
        frame: an embeddings frame (N rows) whose ``embedding`` cells are equal-length
            sequences of numbers.

    Returns:
        float32 array of shape (N, D); (0, 0) for an empty frame.

    Raises:
        DataError: when the column is missing or the lengths differ.
    """
    return vector_matrix(frame, "embedding")


def vector_matrix(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Stack a column of equal-length vectors (``embedding``, ``descriptor``): (N, D) float32,
    (0, 0) for an empty frame.

    Raises:
        DataError: when the column is missing or the lengths differ.
    """
    if column not in frame.columns:
        raise DataError(
            f"embeddings frame has no {column!r} column; pass the output of `learner embed`"
        )
    if len(frame) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    cells = [np.asarray(cell, dtype=np.float32).reshape(-1) for cell in frame[column]]
    lengths = {cell.shape[0] for cell in cells}
    if len(lengths) != 1:
        raise DataError(
            f"{column} lengths differ across rows ({sorted(lengths)}); "
            "embed every scan with the same checkpoint"
        )
    return np.stack(cells)


def _string_array(values: pd.Series) -> pa.Array:
    """Strings with missing values (None / NaN) kept as nulls."""
    as_objects = [None if pd.isna(v) else str(v) for v in values.to_numpy(dtype=object)]
    return pa.array(as_objects, type=pa.string())


def _frame_to_table(frame: pd.DataFrame, metadata: Mapping[str, Any]) -> tuple[pa.Table, int]:
    """Convert an embeddings frame to an Arrow table with the documented column types.

    Returns:
        ``(table, D)`` with D the embedding length (0 for an empty frame).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"embeddings frame lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}"
        )
    dim = int(embedding_matrix(frame).shape[1])
    columns: dict[str, pa.Array] = {}
    for name in frame.columns:
        values = frame[name]
        if name in _VECTOR_COLUMNS:
            # Offsets + one flat buffer: no per-row Python lists for large files.
            matrix = vector_matrix(frame, name)
            width = int(matrix.shape[1])
            offsets = pa.array(np.arange(len(frame) + 1, dtype=np.int32) * width, type=pa.int32())
            columns[name] = pa.ListArray.from_arrays(
                offsets, pa.array(matrix.reshape(-1), type=pa.float32())
            )
        elif name in _STRING_COLUMNS:
            columns[name] = _string_array(values)
        elif name in _ARROW_TYPES:
            columns[name] = pa.array(values.to_numpy(), type=_ARROW_TYPES[name], from_pandas=True)
        else:
            columns[str(name)] = pa.array(values, from_pandas=True)
    return _with_metadata(pa.table(columns), metadata), dim


def write_embeddings(frame: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Write an embeddings frame to Parquet atomically.

    Args:
        frame: one row per scan with at least ``REQUIRED_COLUMNS``; ``embedding`` cells are
            sequences of length D.
        path: target ``.parquet`` file; its folder is created.
        metadata: JSON-serialisable run facts (objective, seed, score range,
            higher_is_better, checkpoint), stored under the schema metadata key ``learner``.
    """
    table, _ = _frame_to_table(frame, metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class EmbeddingsWriter:
    """Stream an embeddings file batch by batch, so memory does not grow with the cohort.

    The first batch fixes the schema; later batches must have the same columns. The file
    appears under its final name only on :meth:`close`; :meth:`abort` (or an exception inside
    a ``with`` block) removes the partial file.

    Example, on ``embeddings``, an embeddings frame (the doctests' ``conftest.py`` builds it):

        >>> batches = [embeddings.iloc[i : i + 100] for i in range(0, len(embeddings), 100)]
        >>> with EmbeddingsWriter("run/embeddings.parquet", {"objective": "mse"}) as writer:
        ...     for batch in batches:
        ...         writer.write_batch(batch)
        >>> frame, meta = read_embeddings("run/embeddings.parquet")
        >>> writer.n_rows == len(frame) == len(embeddings), meta
        (True, {'objective': 'mse'})
    """

    def __init__(self, path: str | Path, metadata: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata)
        self._stack = contextlib.ExitStack()
        self._tmp: Path = self._stack.enter_context(atomic_path(self.path))
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._dim: int | None = None
        self._closed = False
        self.n_rows = 0

    def write_batch(self, frame: pd.DataFrame) -> None:
        """Append the rows of ``frame`` (same columns and embedding length as the first batch)."""
        if self._closed:
            raise ValueError(f"EmbeddingsWriter for {self.path} is already closed")
        if len(frame) == 0:
            return
        table, dim = _frame_to_table(frame, self.metadata)
        if self._writer is None or self._schema is None:
            self._schema = table.schema
            self._dim = dim
            self._writer = pq.ParquetWriter(self._tmp, self._schema)
        else:
            if table.schema.names != self._schema.names:
                raise ValueError(
                    f"batch columns {table.schema.names} differ from the first batch's "
                    f"{self._schema.names} ({self.path})"
                )
            if dim != self._dim:
                raise ValueError(
                    f"batch embedding length {dim} differs from the first batch's {self._dim}"
                )
            table = table.cast(self._schema)
        self._writer.write_table(table)
        self.n_rows += len(frame)

    def close(self) -> None:
        """Finish the file and move it to its final name (an empty file when no batch came)."""
        if self._closed:
            return
        if self._writer is None:
            optional = ("zone", "descriptor")
            empty = {n: pa.array([], type=t) for n, t in _ARROW_TYPES.items() if n not in optional}
            pq.write_table(_with_metadata(pa.table(empty), self.metadata), self._tmp)
        else:
            self._writer.close()
        self._closed = True
        self._stack.close()

    def abort(self) -> None:
        """Discard the partial file; the target keeps whatever it held before."""
        if self._closed:
            return
        if self._writer is not None:
            self._writer.close()
        self._closed = True
        # Exiting the atomic context with an error skips the rename and deletes the temp file.
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> EmbeddingsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _with_metadata(table: pa.Table, metadata: Mapping[str, Any]) -> pa.Table:
    """Attach ``metadata`` as JSON under the schema key ``learner``."""
    try:
        encoded = json.dumps(dict(metadata)).encode("utf-8")
    except TypeError as err:
        raise ValueError(f"embeddings metadata is not JSON-serialisable: {err}") from err
    return table.replace_schema_metadata({METADATA_KEY: encoded})


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read an embeddings file.

    Args:
        path: a Parquet file written by :func:`write_embeddings` / :class:`EmbeddingsWriter`.

    Returns:
        ``(frame, metadata)``: the frame has one row per scan, ``embedding`` cells are float32
        arrays of length D; ``metadata`` is the JSON under the ``learner`` key ({} if absent).

    Raises:
        DataError: naming the file when it is missing, not Parquet, lacks a required column,
            or its metadata is not JSON.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: embeddings file not found; run `learner embed` to write it")
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{source}: not a Parquet file ({err}); pass the .parquet written by `learner embed`"
        ) from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.schema.names]
    if missing:
        raise DataError(
            f"{source}: not a learner embeddings file, column '{missing[0]}' is missing "
            f"(needs {list(REQUIRED_COLUMNS)}); write it with `learner embed`"
        )
    embedding_type = table.schema.field("embedding").type
    if not (
        pa.types.is_list(embedding_type) or pa.types.is_large_list(embedding_type)
    ) or not pa.types.is_floating(embedding_type.value_type):
        raise DataError(
            f"{source}: column 'embedding' has type {embedding_type}, expected list<float32>; "
            "write it with `learner embed`"
        )
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    metadata: dict[str, Any] = {}
    if raw is not None:
        try:
            metadata = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(
                f"{source}: schema metadata 'learner' is not valid JSON ({err}); "
                "re-run `learner embed`"
            ) from err
    frame = table.to_pandas()
    return frame, metadata
