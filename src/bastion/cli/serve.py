"""``bastion serve``: the gateway's HTTP API and the ledger's /log/, on one uvicorn server."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bastion.cli.common import HOME_OPTION, console, reported_errors
from bastion.errors import InputError
from bastion.home import Home
from bastion.logs import ENV_LOG, configure_logging


def mount(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8443, help="Port to listen on."),
        home: Path | None = HOME_OPTION,
        log_level: str = typer.Option("warning", help="Log level (Bastion's and uvicorn's)."),
        log_format: str = typer.Option(
            "json", help="json (one object per line, with request ids) or text."
        ),
        sweep_seconds: float = typer.Option(
            5.0, help="How often expired grants and lapsed requests are recorded (0: never)."
        ),
        workers: int = typer.Option(
            1, min=1, max=64, help="Worker processes (each with its own runtime)."
        ),
    ) -> None:
        """Run the gateway: policy-checked, logged-before-released access, plus /log/."""
        with reported_errors(False):
            import uvicorn

            from bastion.cli.serve_snapshots import running_refresher
            from bastion.gateway.app import ENV_SWEEP, create_app
            from bastion.gateway.runtime import Runtime

            if log_format not in ("json", "text"):
                raise InputError("--log-format is json or text", field="log-format")
            # Both formats redact exceptions: type and frames, never messages or locals.
            configure_logging(log_level, log_format)
            h = Home.load(home)
            if workers > 1:
                # Workers import the app themselves: hand them the home and settings by env.
                os.environ["BASTION_HOME"] = str(h.path)
                os.environ[ENV_SWEEP] = str(sweep_seconds)
                os.environ[ENV_LOG] = f"{log_level}:{log_format}"
                console.print(
                    f"Bastion gateway on http://{host}:{port} with {workers} workers",
                    highlight=False,
                )
                with running_refresher(h):
                    uvicorn.run(
                        "bastion.gateway.app:app_from_environment",
                        factory=True,
                        host=host,
                        port=port,
                        workers=workers,
                        log_level=log_level,
                        log_config=None,  # keep the redacting handler configure_logging set
                        access_log=False,
                        timeout_graceful_shutdown=5,
                    )
                return
            rt = Runtime.open(h)
            try:
                api = create_app(rt, sweep_seconds=sweep_seconds, background=True)
                console.print(
                    f"Bastion gateway on http://{host}:{port}  (OpenAPI /openapi.json, "
                    f"log /log/, metrics /metrics; {rt.db.description})",
                    highlight=False,
                )
                config = uvicorn.Config(
                    api,
                    host=host,
                    port=port,
                    log_level=log_level,
                    log_config=None,  # keep the redacting handler configure_logging set
                    access_log=False,
                    loop="auto",
                    http="auto",
                    timeout_graceful_shutdown=5,
                )
                with running_refresher(h):
                    uvicorn.Server(config).run()
            finally:
                rt.close()
