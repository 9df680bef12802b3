"""The dashboard's HTTP side: the page, its JSON API, the event stream, /metrics and the operator actions.

Every read goes through the CLI's own read models (fleet_status, rollout_list, rollout_record, host_detail), so the
page and `klpfleet ... -o json` can never disagree. Actions (pause, resume, promote, abort) exist only when the
server was started with --allow-actions and a token: each POST needs `Authorization: Bearer TOKEN` and the
page's CSRF token in `X-CSRF-Token`, and its Origin, when the browser sends one, must be this server. Each action
goes through controller.control.request like the CLI's, and its event names who asked (the token's fingerprint
and the client's address).

With a token configured, every read needs it too (the fleet's state, events with connection vars, metrics): as
a bearer token, or as the session cookie the page gets by sending it once to /api/session (an EventSource cannot
send headers). Only the page's shell and its static files are served without it; they hold no data. Requests
whose Host header is not one of `allowed_hosts` are refused (DNS rebinding), event streams are capped, and ids
are range-checked before any query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from klpfleet.db.engine import Database
from klpfleet.db.types import MAX_ROW_ID
from klpfleet.errors import KlpfleetError
from klpfleet.names import HOST_NAME_RE
from klpfleet.reads.envelope import plain

STATIC = Path(__file__).parent / "static"
ACTIONS = ("pause", "resume", "promote", "abort")
POLL_SECONDS = 1.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_STREAMS = 16  # open event streams at once; each polls the database every POLL_SECONDS
MAX_ID = MAX_ROW_ID
SESSION_COOKIE = "klpfleet_session"
MAX_WEBHOOK_BODY = 256 * 1024  # an Alertmanager notification of a few hundred alerts
MAX_VEX_HOSTS = 1000  # host= names in one VEX request; the whole fleet is the request without any


def host_of(header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8080` -> `::1`)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0].lower()
    return header.rsplit(":", 1)[0].lower() if header.count(":") == 1 else header.lower()


class AllowedHosts:
    """Refuses a request whose Host header names anything but these (DNS rebinding turns a page on another
    site into a reader of a loopback dashboard otherwise)."""

    def __init__(self, app: Any, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_of(header) not in self.allowed:
                await JSONResponse({"error": "this Host is not served here"}, status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


HISTORY_SECONDS = 60.0


def create_app(
    db: Database,
    *,
    token: str | None = None,
    allow_actions: bool = False,
    allowed_hosts: list[str] | None = None,
) -> Any:
    if allow_actions and not token:
        raise ValueError("actions need a token")
    csrf = secrets.token_urlsafe(32)
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8] if token else None
    # The cookie proves the token was shown once; it is not the token, and a restart invalidates it.
    session_value = hmac.new(secrets.token_bytes(32), (token or "").encode(), "sha256").hexdigest()
    streams = {"open": 0}

    def bearer_ok(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return (
            token is not None
            and given.startswith("Bearer ")
            and hmac.compare_digest(given[7:].encode(), token.encode())
        )

    def authorized(request: Request) -> bool:
        if not token:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bearer_ok(request) or hmac.compare_digest(cookie.encode(), session_value.encode())

    def refused() -> Response:
        return JSONResponse(
            {"error": "this dashboard needs its token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    def guarded(endpoint: Any) -> Any:
        async def checked(request: Request) -> Response:
            if not authorized(request):
                return refused()
            rid = request.path_params.get("rid")
            if rid is not None and not 0 < rid <= MAX_ID:
                return JSONResponse({"error": f"no rollout {rid}"[:60]}, status_code=404)
            name = request.path_params.get("name")
            if name is not None and not HOST_NAME_RE.match(name):
                return JSONResponse({"error": "no such host"}, status_code=404)
            response: Response = await endpoint(request)
            return response

        return checked

    def read(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                data = await run_in_threadpool(fn, request)
            except KlpfleetError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            return JSONResponse(plain(data))

        return guarded(endpoint)

    async def session(request: Request) -> Response:
        if request.method == "GET":  # what the page asks first: whether it must ask for the token
            return JSONResponse({"needed": bool(token), "authorized": authorized(request)})
        if not token:
            return JSONResponse({"session": "not needed"})
        if not bearer_ok(request):
            return refused()
        response = JSONResponse({"session": "started"})
        response.set_cookie(
            SESSION_COOKIE,
            session_value,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def status(_: Request) -> Any:
        from klpfleet.reads.fleet_status import fleet_status

        with db.engine.connect() as conn:
            return fleet_status(conn)

    def rollouts(_: Request) -> Any:
        from klpfleet.reads.rollouts import rollout_list

        with db.session() as s:
            return rollout_list(s)

    def rollout(request: Request) -> Any:
        from klpfleet.reads.rollouts import rollout_record

        with db.session() as s:
            return rollout_record(s, int(request.path_params["rid"]), event_limit=50)

    def one_cve(request: Request) -> Any:
        from klpfleet.reads.exposure import cve_id, exposure

        with db.engine.connect() as conn:
            (found,) = exposure(conn, cve_id(request.path_params["cve"]))
        return dict(found.summary(), hosts=found.hosts)

    async def vex(request: Request) -> Response:
        """The fleet's VEX document (`klpfleet cves -o openvex|cyclonedx`), or only the hosts named by ?host=."""
        fmt = request.path_params["fmt"]
        if fmt not in ("openvex", "cyclonedx"):
            return JSONResponse({"error": "no such VEX format (openvex, cyclonedx)"}, status_code=404)
        names = request.query_params.getlist("host")
        if len(names) > MAX_VEX_HOSTS or not all(HOST_NAME_RE.match(n) for n in names):
            return JSONResponse({"error": f"host= takes up to {MAX_VEX_HOSTS} host names"}, status_code=400)
        try:
            body = await run_in_threadpool(_vex, db, fmt, set(names) or None)
        except KlpfleetError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        kind = "application/vnd.cyclonedx+json" if fmt == "cyclonedx" else "application/json"
        return Response(body, media_type=kind)

    history: dict[str, Any] = {"at": 0.0, "data": None}

    def exposure_over_time(_: Request) -> Any:
        """Replaying the audit trail costs a pass over its state events: one replay serves every page for a minute
        (a line of 48 points moves little in that time)."""
        from klpfleet.reads.exposure_history import exposure_history

        if history["data"] is None or time.monotonic() - history["at"] > HISTORY_SECONDS:
            with db.engine.connect() as conn:
                history["data"], history["at"] = exposure_history(conn), time.monotonic()
        return history["data"]

    def host(request: Request) -> Any:
        from klpfleet.reads.views import host_detail

        with db.session() as s:
            return host_detail(s, request.path_params["name"], 30)

    def events_since(last: int) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from klpfleet.db.models import Event
        from klpfleet.reads.views import event_record

        with db.session() as s:
            query = select(Event).where(Event.id > last).order_by(Event.id).limit(500)
            if last < 0:  # a new page: the last 50
                query = select(Event).order_by(Event.id.desc()).limit(50)
            rows = [event_record(e) for e in s.scalars(query)]
        return sorted(rows, key=lambda e: e["id"])

    async def stream(request: Request) -> Response:
        if streams["open"] >= MAX_STREAMS:
            return JSONResponse({"error": f"{MAX_STREAMS} event streams are open already"}, status_code=503)
        streams["open"] += 1

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                async for item in follow():
                    yield item
            finally:
                streams["open"] -= 1

        async def follow() -> AsyncIterator[dict[str, str]]:
            last = -1
            while True:
                for e in await run_in_threadpool(events_since, last):
                    if await request.is_disconnected():
                        return
                    last = max(last, e["id"])
                    yield {"event": "klp", "id": str(e["id"]), "data": json.dumps(plain(e))}
                last = max(last, 0)
                if await request.is_disconnected():
                    return
                await asyncio.sleep(POLL_SECONDS)

        return EventSourceResponse(events(), ping=15)

    async def metrics(_: Request) -> Response:
        from klpfleet.reads.metrics import exposition

        body = await run_in_threadpool(exposition, db.engine.connect)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def page(_: Request) -> Response:
        config = {"csrf": csrf if allow_actions else None, "actions": allow_actions, "auth": bool(token)}
        text = (
            (STATIC / "index.html")
            .read_text()
            .replace("__KLPFLEET_CONFIG__", html.escape(json.dumps(config), quote=True))
        )
        return HTMLResponse(text, headers={"Content-Security-Policy": "default-src 'self'; style-src 'self'"})

    async def action(request: Request) -> Response:
        what = request.path_params["action"]
        if not allow_actions:
            return JSONResponse({"error": "read-only dashboard (start it with --allow-actions)"}, status_code=403)
        if not bearer_ok(request):
            return JSONResponse({"error": "a valid token is needed"}, status_code=401)
        rid = request.path_params["rid"]
        if not 0 < rid <= MAX_ID:
            return JSONResponse({"error": "no such rollout"}, status_code=404)
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        if what not in ACTIONS:
            return JSONResponse({"error": f"unknown action {what!r}"}, status_code=404)
        actor = f"dashboard:token-{fingerprint}@{request.client.host if request.client else '?'}"
        try:
            status = await run_in_threadpool(_act, db, int(request.path_params["rid"]), what, actor)
        except KlpfleetError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"rollout": int(request.path_params["rid"]), "status": status, "actor": actor})

    async def alertmanager(request: Request) -> Response:
        """Alertmanager's webhook: firing alerts with a klpfleet_rollout label pause or abort those rollouts. Not a
        browser's request: the token (Alertmanager's http_config authorization), no cookie, no CSRF, no Origin."""
        if not allow_actions:
            return JSONResponse({"error": "read-only dashboard (start it with --allow-actions)"}, status_code=403)
        if not token or not bearer_ok(request):
            return JSONResponse({"error": "a valid token is needed"}, status_code=401)
        if request.headers.get("origin") is not None:
            return JSONResponse({"error": "the webhook is not for browsers"}, status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BODY:
                return JSONResponse({"error": "the body is too large"}, status_code=413)
        actor = f"alertmanager:token-{fingerprint}@{request.client.host if request.client else '?'}"
        try:
            done = await run_in_threadpool(_alerts, db, body, actor)
        except KlpfleetError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"acted": done})

    app = Starlette(
        routes=[
            Route("/api/alertmanager", alertmanager, methods=["POST"]),
            Route("/", page),
            Route("/api/session", session, methods=["GET", "POST"]),
            Route("/api/status", read(status)),
            Route("/api/rollouts", read(rollouts)),
            Route("/api/rollouts/{rid:int}", read(rollout)),
            Route("/api/rollouts/{rid:int}/{action:str}", action, methods=["POST"]),
            Route("/api/hosts/{name:str}", read(host)),
            Route("/api/cves/history", read(exposure_over_time)),
            Route("/api/vex/{fmt:str}", guarded(vex)),
            Route("/api/cves/{cve:str}", read(one_cve)),
            Route("/api/events", guarded(stream)),
            Route("/metrics", guarded(metrics)),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return AllowedHosts(
        app, {host_of(h) if h.startswith("[") else h.lower() for h in allowed_hosts or []} | set(LOOPBACK_NAMES)
    )


def _alerts(db: Database, body: bytes, actor: str) -> list[dict[str, Any]]:
    from klpfleet.controller.alerts import act_on_alerts, parse_webhook
    from klpfleet.controller.control import driver_alive, spawn_driver

    done = act_on_alerts(db, parse_webhook(body), actor)
    for rid in {d["rollout"] for d in done if d["result"] == "aborting"}:
        if not driver_alive(db, rid):
            spawn_driver(db, rid)  # an abort rolls back: something must drive it
    return done


def _vex(db: Database, fmt: str, hosts: set[str] | None) -> str:
    from datetime import UTC, datetime

    from klpfleet.reads.vex import vex_text

    with db.engine.connect() as conn:
        return vex_text(conn, fmt, hosts, "klpfleet dashboard", datetime.now(UTC))


def _act(db: Database, rollout_id: int, what: str, actor: str) -> str:
    """The CLI's request, and a background driver when the rollout needs one and has none."""
    from klpfleet.controller.control import driver_alive, request, spawn_driver
    from klpfleet.states import Request as Ask

    reasons = {"pause": "paused from the dashboard", "promote": "promoted", "abort": "aborted from the dashboard"}
    row = request(db, rollout_id, Ask(what), reason=reasons.get(what), actor=actor)
    if what != "pause" and not driver_alive(db, rollout_id):
        spawn_driver(db, rollout_id)
    return str(row.status)
