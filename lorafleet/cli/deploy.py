"""``lorafleet deploy ...``: helpers for containers and clusters (docs/deploy.md).

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

import typer

from lorafleet.cli import app

deploy_app = typer.Typer(help="Helpers for containers and clusters (see docs/deploy.md).", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

DEFAULT_HEALTH_URL = "http://127.0.0.1:8000/health"


@deploy_app.command("healthcheck")
def healthcheck(
    url: str = typer.Option(DEFAULT_HEALTH_URL, envvar="LORAFLEET_HEALTHCHECK_URL",
                            help="URL that must answer 200 (env LORAFLEET_HEALTHCHECK_URL; the gateway is on :9000)."),
    timeout_s: float = typer.Option(5.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Exit 0 if URL answers 200, else 1 with the reason: the image's HEALTHCHECK (slim images have no curl)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (an operator-given URL)
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        typer.echo(f"unhealthy: {url}: {getattr(e, 'reason', e)}", err=True)
        raise typer.Exit(1) from None
    if status != 200:
        typer.echo(f"unhealthy: {url} answered {status}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: {url}")
