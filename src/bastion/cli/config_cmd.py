"""``bastion config``: the settings in force for a home, and where each one came from."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import config_app
from bastion.home import Home
from bastion.settings import effective_settings


@config_app.command("show")
def show(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Every setting in force (file, environment or default), secrets redacted.

    The schema, with each setting's meaning and range, is ``src/bastion/settings.py``;
    a key the schema does not know stops the program with the file, section and key named.
    """
    with reported_errors(as_json):
        h = Home.load(home)
        rows = effective_settings(h.settings)
        if as_json:
            emit_json(
                {
                    "ok": True,
                    "home": str(h.path),
                    "file": str(h.config_file),
                    "settings": [{"key": k, "value": v, "source": s} for k, v, s in rows],
                }
            )
            return
        table = Table(title=f"Settings in force ({escape(str(h.config_file))})")
        table.add_column("setting", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("source", no_wrap=True)
        for key, value, source in rows:
            shown = value if isinstance(value, str) else json.dumps(value)
            style = "dim" if source == "default" else ""
            table.add_row(key, escape(shown), escape(source), style=style)
        console.print(table)
