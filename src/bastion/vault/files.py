"""Streaming readers for ingest: CSV, JSONL and Parquet, one raw row at a time.

Each reader yields ``(row_number, row)`` with ``row_number`` counting data rows from 1 (the
CSV header is not a row; a JSONL row is its line number; a Parquet row is its index + 1).
Problems with the file itself are ``InputError`` naming the file and row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bastion.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

Row = tuple[int, Mapping[str, object]]
FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_PARQUET_BATCH = 4096


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise InputError(
            f"unsupported file type {path.suffix!r} (expected one of {known})", file=str(path)
        )
    return fmt


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError("file not found", file=str(path))
    if not path.is_file():
        raise InputError("not a regular file", file=str(path))


def count_rows(path: Path) -> int | None:
    """Rows in the file, for a progress bar (cheap: newline count or Parquet metadata)."""
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:
            return None
    lines = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(lines - (1 if fmt == "csv" else 0), 0)


def read_rows(path: Path) -> Iterator[Row]:
    fmt = file_format(path)
    _check_readable(path)
    if fmt == "csv":
        return _read_csv(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_parquet(path)


def _read_csv(path: Path) -> Iterator[Row]:
    name = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise InputError("empty CSV file (no header row)", file=name)
            if len(set(reader.fieldnames)) != len(reader.fieldnames):
                raise InputError("CSV header names a column twice", file=name)
            for number, row in enumerate(reader, start=1):
                if None in row:
                    raise InputError(
                        "row has more values than the header has columns", file=name, row=number
                    )
                yield number, row
    except UnicodeDecodeError:
        raise InputError("file is not valid UTF-8", file=name) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", file=name) from None


def _read_jsonl(path: Path) -> Iterator[Row]:
    name = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"invalid JSON at column {exc.colno}: {exc.msg}", file=name, row=number
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError("line is not a JSON object", file=name, row=number)
                yield number, obj
    except UnicodeDecodeError:
        raise InputError("file is not valid UTF-8", file=name) from None


def _read_parquet(path: Path) -> Iterator[Row]:
    number = 0
    for batch in read_arrow(path, _PARQUET_BATCH):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def read_arrow(path: Path, batch_size: int = _PARQUET_BATCH) -> Iterator[pa.RecordBatch]:
    """A Parquet file as Arrow record batches of up to ``batch_size`` rows, in file order.

    A missing file fails at once; a corrupt one when read, naming the first row that
    could not be read.
    """
    if file_format(path) != "parquet":
        raise InputError("not a Parquet file", file=str(path))
    _check_readable(path)
    return _arrow_batches(path, batch_size)


def _arrow_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        raise InputError("not a readable Parquet file", file=name) from None
    number = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size):
            yield batch
            number += batch.num_rows
    except (pa.ArrowException, OSError):
        raise InputError("Parquet file is corrupt", file=name, row=number + 1) from None
