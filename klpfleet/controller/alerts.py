"""Stopping rollouts from outside: an Alertmanager webhook's firing alerts pause or abort the rollouts they name.

An alert names rollouts by its labels: `klpfleet_rollout` is a rollout id, or `*` for every running rollout;
`klpfleet_action` is `pause` (the default) or `abort`. Resolved alerts and alerts without the label do nothing
(a webhook receives every alert of its route). The body is read as hostile: bounded, and nothing from it but the
ids, the action and a few bounded labels is kept, in the `rollout.alert` event each stopped rollout gets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from klpfleet.controller.control import request
from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout
from klpfleet.errors import KlpfleetError, UsageError
from klpfleet.states import ROLLOUT_TRANSITIONS, Request, RolloutStatus

MAX_BODY = 256 * 1024
MAX_ALERTS = 500
MAX_ID = 2**31 - 1
KEPT_LABELS = 20


@dataclass(frozen=True)
class AlertAsk:
    rollouts: tuple[int, ...] | None  # None: every running rollout
    action: Request
    alertname: str
    labels: dict[str, str]


def parse_webhook(body: bytes) -> list[AlertAsk]:
    """The firing alerts that name rollouts; UsageError (one line) for a body that is not a webhook."""
    if len(body) > MAX_BODY:
        raise UsageError(f"the body is larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UsageError("the body is not JSON") from None
    alerts = doc.get("alerts") if isinstance(doc, dict) else None
    if not isinstance(alerts, list):
        raise UsageError("not an Alertmanager webhook (no list of alerts)")
    asks = []
    for alert in alerts[:MAX_ALERTS]:
        if not isinstance(alert, dict) or alert.get("status") != "firing" or not isinstance(alert.get("labels"), dict):
            continue
        labels = {str(k)[:64]: str(v)[:200] for k, v in list(alert["labels"].items())[:KEPT_LABELS]}
        named = labels.get("klpfleet_rollout")
        if named is None:
            continue
        action = labels.get("klpfleet_action", "pause")
        if action not in ("pause", "abort"):
            raise UsageError(f"klpfleet_action {action[:20]!r}: pause or abort")
        if named == "*":
            ids = None
        else:
            parts = [p.strip() for p in named.split(",")]
            if not all(re.fullmatch(r"[0-9]{1,10}", p) and 0 < int(p) <= MAX_ID for p in parts):
                raise UsageError(f"klpfleet_rollout {named[:40]!r}: rollout ids (1,2) or *")
            ids = tuple(int(p) for p in parts)
        asks.append(AlertAsk(ids, Request(action), labels.get("alertname", "?"), labels))
    return asks


def act_on_alerts(db: Database, asks: list[AlertAsk], actor: str) -> list[dict[str, Any]]:
    """Each named rollout paused or aborted where its status allows; what was done, per rollout."""
    done: list[dict[str, Any]] = []
    for ask in asks:
        with db.session() as s:
            ids = ask.rollouts or tuple(
                s.scalars(select(Rollout.id).where(Rollout.status == RolloutStatus.RUNNING).order_by(Rollout.id))
            )
        for rid in ids:
            outcome = _act(db, rid, ask, actor)
            done.append({"rollout": rid, "action": ask.action.value, "alertname": ask.alertname, "result": outcome})
    return done


def _act(db: Database, rid: int, ask: AlertAsk, actor: str) -> str:
    with db.session() as s:
        r = s.get(Rollout, rid)
        status = RolloutStatus(r.status) if r is not None else None
    if status is None:
        return "no such rollout"
    if (ask.action, status) not in ROLLOUT_TRANSITIONS:
        return f"left {status}"
    reason = f"alert {ask.alertname} firing"
    try:
        request(db, rid, ask.action, reason=reason, actor=actor)
    except KlpfleetError as exc:  # the status changed between the read and the request
        return str(exc)
    with db.session.begin() as s:
        r = s.get(Rollout, rid)
        events.add(s, "rollout.alert", actor=actor, rollout=r, action=ask.action.value, alert=ask.labels)
    return "aborting" if ask.action == Request.ABORT else "paused"
