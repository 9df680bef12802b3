"""The dashboard's HTTP side: the page, its JSON API, the event stream, /metrics and the operator actions.

Every read goes through the CLI's own read models (fleet_status, rollout_list, rollout_record, host_detail), so the
page and `klpfleet ... -o json` can never disagree. Actions (pause, resume, promote, abort) exist only when the
server was started with --allow-actions and a token: each POST needs `Authorization: Bearer TOKEN` and the
page's CSRF token in `X-CSRF-Token`, and its Origin, when the browser sends one, must be this server. Each action
goes through controller.control.request like the CLI's, and its event names who asked (the token's fingerprint
and the client's address).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
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

from klpfleet.cli.output import plain
from klpfleet.db.engine import Database
from klpfleet.errors import KlpfleetError

STATIC = Path(__file__).parent / "static"
ACTIONS = ("pause", "resume", "promote", "abort")
POLL_SECONDS = 1.0


def create_app(db: Database, *, token: str | None = None, allow_actions: bool = False) -> Starlette:
    if allow_actions and not token:
        raise ValueError("actions need a token")
    csrf = secrets.token_urlsafe(32)
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8] if token else None

    def read(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                data = await run_in_threadpool(fn, request)
            except KlpfleetError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            return JSONResponse(plain(data))

        return endpoint

    def status(_: Request) -> Any:
        from klpfleet.fleet_status import fleet_status

        with db.engine.connect() as conn:
            return fleet_status(conn)

    def rollouts(_: Request) -> Any:
        from klpfleet.controller.views import rollout_list

        with db.session() as s:
            return rollout_list(s)

    def rollout(request: Request) -> Any:
        from klpfleet.controller.views import rollout_record

        with db.session() as s:
            return rollout_record(s, int(request.path_params["rid"]), event_limit=50)

    def host(request: Request) -> Any:
        from klpfleet.views import host_detail

        with db.session() as s:
            return host_detail(s, request.path_params["name"], 30)

    def events_since(last: int) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from klpfleet.db.models import Event
        from klpfleet.views import event_record

        with db.session() as s:
            query = select(Event).where(Event.id > last).order_by(Event.id).limit(500)
            if last < 0:  # a new page: the last 50
                query = select(Event).order_by(Event.id.desc()).limit(50)
            rows = [event_record(e) for e in s.scalars(query)]
        return sorted(rows, key=lambda e: e["id"])

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[dict[str, str]]:
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
        from klpfleet.metrics import exposition

        body = await run_in_threadpool(exposition, db.engine.connect)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def page(_: Request) -> Response:
        config = {"csrf": csrf if allow_actions else None, "actions": allow_actions}
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
        given = request.headers.get("authorization", "")
        if not (token and given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            return JSONResponse({"error": "a valid token is needed"}, status_code=401)
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

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/status", read(status)),
            Route("/api/rollouts", read(rollouts)),
            Route("/api/rollouts/{rid:int}", read(rollout)),
            Route("/api/rollouts/{rid:int}/{action:str}", action, methods=["POST"]),
            Route("/api/hosts/{name:str}", read(host)),
            Route("/api/events", stream),
            Route("/metrics", metrics),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


def _act(db: Database, rollout_id: int, what: str, actor: str) -> str:
    """The CLI's request, and a background driver when the rollout needs one and has none."""
    from klpfleet.controller.control import driver_alive, request, spawn_driver
    from klpfleet.states import Request as Ask

    reasons = {"pause": "paused from the dashboard", "promote": "promoted", "abort": "aborted from the dashboard"}
    row = request(db, rollout_id, Ask(what), reason=reasons.get(what), actor=actor)
    if what != "pause" and not driver_alive(db, rollout_id):
        spawn_driver(db, rollout_id)
    return str(row.status)
