"""``bastion ingest DATASET FILE``: seal a CSV, JSONL or Parquet file, all rows or none."""

from __future__ import annotations

import hashlib
from pathlib import Path

import typer

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    progress_bar,
    reported_errors,
)
from bastion.cli.vault import opened_vault, operator, record
from bastion.clock import iso
from bastion.events import DataIngest
from bastion.vault import ingest_file
from bastion.vault.files import count_rows


def ingest(
    dataset: str = typer.Argument(..., help="A dataset of the catalog (users, videos, events)."),
    file: Path = typer.Argument(..., help="A .csv, .jsonl or .parquet file."),
    batch_size: int = typer.Option(2000, "--batch-size", min=1, help="Rows per batch."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate, pseudonymize and seal a file; on the first bad row nothing is stored."""
    with reported_errors(as_json), opened_vault(home) as vault:
        vault.catalog.dataset(dataset)
        total = count_rows(file) if file.is_file() else None
        progress = progress_bar(f"[bold]{dataset}", disable=as_json)
        with progress:
            task = progress.add_task("ingest", total=total)
            result = ingest_file(
                vault,
                dataset,
                file,
                batch_size=batch_size,
                progress=lambda n: progress.advance(task, n),
            )
        entry = record(
            home,
            DataIngest(
                actor=operator(None),
                reason=f"ingest {file.name}",
                at=iso(vault.clock.now()),
                dataset=dataset,
                source=file.name,
                records=result.rows,
                sealed_values=result.sealed_values,
                source_sha256=file_sha256(file),
            ),
        )
        if as_json:
            emit_json({"ok": True, **result.to_json(), "ledger": entry.to_json()})
        else:
            console.print(
                f"Ingested {result.rows:,} {dataset} rows from {file}: {result.sealed_values:,} "
                f"values sealed, {result.new_subjects:,} new subjects, "
                f"{result.new_pseudonyms:,} new pseudonyms; ledger index {entry.index}."
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def mount(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
