"""`klpfleet dashboard`: serve the live web view (Starlette on uvicorn)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import info
from klpfleet.errors import UsageError

TOKEN_ENV = "KLPFLEET_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a token


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UsageError(f"--listen {value!r}: the address must be an IP address (or localhost)") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise UsageError("the dashboard token must be at least 16 characters (e.g. `openssl rand -hex 24`)")
    return token or None


@click.command("dashboard")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="ADDRESS:PORT")
@click.option("--allow-actions", is_flag=True, help="Offer pause, resume, promote and abort (needs a token).")
@click.option(
    "--token-file",
    metavar="FILE",
    help=f"The token actions (and a non-loopback address) need; default: ${TOKEN_ENV}.",
)
@click.pass_context
def dashboard(ctx: click.Context, listen: str, allow_actions: bool, token_file: str | None) -> None:
    """A live web view of the fleet and its rollouts, read-only by default.

    The page follows the audit trail as it is written (server-sent events): rollouts advance without a reload.
    /metrics serves the Prometheus exposition. Actions need --allow-actions and a token, sent by the page as a
    bearer token with a CSRF token; each becomes an event naming the token's fingerprint and the client.

    \b
    Examples:
      klpfleet dashboard                                   # http://127.0.0.1:8080, read-only
      KLPFLEET_DASHBOARD_TOKEN=$(openssl rand -hex 24) klpfleet dashboard --allow-actions
      klpfleet dashboard --listen 0.0.0.0:8080 --token-file /etc/klpfleet/dashboard.token
    """
    import uvicorn

    from klpfleet.dashboard.app import create_app

    host, port = parse_listen(listen)
    token = read_token(token_file)
    if allow_actions and not token:
        raise UsageError(f"--allow-actions needs a token (--token-file FILE or ${TOKEN_ENV})")
    if not is_loopback(host) and not token:
        raise UsageError(f"{host} is not a loopback address: give a token (--token-file FILE or ${TOKEN_ENV})")
    app = create_app(database(ctx), token=token, allow_actions=allow_actions)
    info(f"klpfleet dashboard on http://{listen} ({'actions allowed' if allow_actions else 'read-only'})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
