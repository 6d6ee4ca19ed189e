"""``bastion synth``: generate the synthetic social video platform."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from bastion.cli.common import JSON_OPTION, console, emit_json, progress_bar, reported_errors
from bastion.errors import InputError
from bastion.extras import require


class OutputFormat(StrEnum):
    """Mirrors bastion.synth.Format without importing pyarrow at CLI start-up."""

    PARQUET = "parquet"
    CSV = "csv"
    JSONL = "jsonl"


def synth(
    out: Path = typer.Option(Path("synth"), "--out", "-o", help="Directory to write into."),
    seed: int = typer.Option(42, "--seed", help="Random seed: same seed, same data."),
    users: int = typer.Option(10_000, "--users", help="Number of users."),
    videos: int = typer.Option(2_000, "--videos", help="Number of videos."),
    events: int = typer.Option(100_000, "--events", help="Number of engagement events."),
    campaigns: int = typer.Option(200, "--campaigns", help="Number of ad campaigns."),
    fmt: OutputFormat = typer.Option(OutputFormat.PARQUET, "--format", "-f", help="Output format."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate users, videos and events (deterministic for a seed, streamed in chunks)."""
    with reported_errors(as_json):
        require("analytics", "bastion synth")
        from bastion.synth import SynthSpec, generate

        try:
            spec = SynthSpec(
                seed=seed, users=users, videos=videos, events=events, campaigns=campaigns
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        totals = {"users": users, "videos": videos, "events": events}
        if as_json:
            result = generate(spec, out, fmt.value)
            emit_json({"ok": True, **result.to_json()})
            return
        progress = progress_bar("[bold]{task.description:>7}")
        with progress:
            tasks = {name: progress.add_task(name, total=n) for name, n in totals.items()}
            result = generate(
                spec, out, fmt.value, on_progress=lambda name, n: progress.advance(tasks[name], n)
            )
        table = Table(title=f"Synthetic platform (seed {seed}, {result.seconds:.1f} s)")
        for col in ("dataset", "rows", "file", "MiB"):
            table.add_column(col, justify="right" if col in ("rows", "MiB") else "left")
        for name, path in result.files.items():
            table.add_row(
                name, f"{result.rows[name]:,}", str(path), f"{result.bytes[name] / 2**20:.1f}"
            )
        console.print(table)


def mount(app: typer.Typer) -> None:
    app.command("synth")(synth)
