"""Streaming writers for Arrow chunks: Parquet, CSV and JSONL, each into a temporary file
that is renamed into place only when complete (a crash never leaves a half-written file
under the final name).

CSV has no nested types, so string lists become ``a;b`` and points become ``lat,lon``: the
forms ``bastion.catalog.validate_row`` reads back. JSONL keeps them as arrays and objects.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


class Format(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    JSONL = "jsonl"


class ChunkWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _AtomicFile:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(f".{final.name}.partial")

    def commit(self) -> None:
        os.replace(self.partial, self.final)

    def abort(self) -> None:
        self.partial.unlink(missing_ok=True)


class ParquetChunkWriter(_AtomicFile):
    def __init__(self, final: Path, schema: pa.Schema) -> None:
        super().__init__(final)
        # zstd level 1: about as fast as snappy here and a third smaller.
        self._writer = pq.ParquetWriter(
            self.partial, schema, compression="zstd", compression_level=1
        )

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def commit(self) -> None:
        self._writer.close()
        super().commit()

    def abort(self) -> None:
        self._writer.close()
        super().abort()


def flatten_for_csv(table: pa.Table) -> pa.Table:
    """Nested columns as text: lists joined with ';', points as 'lat,lon'."""
    columns = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type):
            col = pc.binary_join(col, ";")
        elif pa.types.is_struct(col.type):
            lat = pc.cast(pc.struct_field(col, "lat"), pa.string())
            lon = pc.cast(pc.struct_field(col, "lon"), pa.string())
            joined = pc.binary_join_element_wise(lat, lon, ",")
            col = pc.if_else(pc.is_null(col), pa.scalar(None, pa.string()), joined)
        columns.append(col)
    return pa.table(columns, names=table.column_names)


class CsvChunkWriter(_AtomicFile):
    def __init__(self, final: Path, schema: pa.Schema) -> None:
        super().__init__(final)
        self._writer: pacsv.CSVWriter | None = None

    def write(self, table: pa.Table) -> None:
        flat = flatten_for_csv(table)
        if self._writer is None:
            self._writer = pacsv.CSVWriter(self.partial, flat.schema)
        self._writer.write_table(flat)

    def commit(self) -> None:
        if self._writer is None:
            self.partial.write_text("")
        else:
            self._writer.close()
        super().commit()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        super().abort()


class JsonlChunkWriter(_AtomicFile):
    def __init__(self, final: Path, schema: pa.Schema) -> None:
        super().__init__(final)
        self._fh: IO[bytes] = open(self.partial, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, table: pa.Table) -> None:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        frame.write_ndjson(self._fh)

    def commit(self) -> None:
        self._fh.close()
        super().commit()

    def abort(self) -> None:
        self._fh.close()
        super().abort()


def open_writer(fmt: Format, final: Path, schema: pa.Schema) -> ChunkWriter:
    if fmt is Format.PARQUET:
        return ParquetChunkWriter(final, schema)
    if fmt is Format.CSV:
        return CsvChunkWriter(final, schema)
    return JsonlChunkWriter(final, schema)


class writing:
    """``with writing(fmt, path, schema) as w:`` commits on success, aborts on any error."""

    def __init__(self, fmt: Format, final: Path, schema: pa.Schema) -> None:
        self._writer = open_writer(fmt, final, schema)

    def __enter__(self) -> ChunkWriter:
        return self._writer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._writer.commit()
        else:
            self._writer.abort()
