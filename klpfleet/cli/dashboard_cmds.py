"""`klpfleet dashboard`: serve the live web view (Starlette on uvicorn)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import info
from klpfleet.errors import UsageError

TOKEN_ENV = "KLPFLEET_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a token


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
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
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A name browsers reach the dashboard by (the Host header); loopback names and the --listen address "
    "always are. Repeat for more.",
)
@click.option(
    "--trusted-proxy",
    metavar="ADDRESS",
    help="A reverse proxy whose X-Forwarded-For names the client in action events (otherwise forwarded headers "
    "are ignored).",
)
@click.pass_context
def dashboard(
    ctx: click.Context,
    listen: str,
    allow_actions: bool,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    trusted_proxy: str | None,
) -> None:
    """A live web view of the fleet and its rollouts, read-only by default.

    The page follows the audit trail as it is written (server-sent events): rollouts advance without a reload.
    /metrics serves the Prometheus exposition. Actions need --allow-actions and a token, sent by the page as a
    bearer token with a CSRF token; each becomes an event naming the token's fingerprint and the client.

    \b
    Examples:
      klpfleet dashboard                                   # http://127.0.0.1:8080, read-only
      KLPFLEET_DASHBOARD_TOKEN=$(openssl rand -hex 24) klpfleet dashboard --allow-actions
      klpfleet dashboard --listen 0.0.0.0:8080 --token-file /etc/klpfleet/dashboard.token \\
          --allowed-host klpfleet.example.com
    """
    import uvicorn

    from klpfleet.dashboard.app import create_app

    host, port = parse_listen(listen)
    token = read_token(token_file)
    if allow_actions and not token:
        raise UsageError(f"--allow-actions needs a token (--token-file FILE or ${TOKEN_ENV})")
    if not is_loopback(host) and not token:
        raise UsageError(f"{host} is not a loopback address: give a token (--token-file FILE or ${TOKEN_ENV})")
    names = [check_host_name(n) for n in allowed_hosts]
    if host not in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        names.append(host)
    if trusted_proxy is not None:
        try:
            ipaddress.ip_address(trusted_proxy)
        except ValueError:
            raise UsageError(f"--trusted-proxy {trusted_proxy[:60]!r}: expected the proxy's IP address") from None
    app = create_app(database(ctx), token=token, allow_actions=allow_actions, allowed_hosts=names)
    info(f"klpfleet dashboard on http://{listen} ({'actions allowed' if allow_actions else 'read-only'})")
    uvicorn.run(app, host=host, port=port, **server_options(trusted_proxy))


def server_options(trusted_proxy: str | None) -> dict[str, Any]:
    """uvicorn's settings for the dashboard: forwarded headers only from a proxy the operator named (uvicorn
    believes X-Forwarded-For from loopback by default, so any local client could name itself in an event)."""
    return {
        "log_level": "warning",
        "access_log": False,
        "proxy_headers": trusted_proxy is not None,
        "forwarded_allow_ips": trusted_proxy or "",
    }


def check_host_name(name: str) -> str:
    from klpfleet.names import HOST_NAME_RE

    if not HOST_NAME_RE.match(name):
        raise UsageError(f"--allowed-host {name[:60]!r}: not a host name")
    return name
