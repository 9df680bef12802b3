"""What commands share: opening the database named on the command line, the type of a row id, and durations."""

from __future__ import annotations

import click

from klpfleet.db.engine import Database, connect
from klpfleet.db.types import MAX_ROW_ID

# A rollout id as the operator types it: a number no row can have is refused by click in one line (exit 2).
ROLLOUT_ID = click.IntRange(1, MAX_ROW_ID)


class Duration(click.ParamType):
    """Seconds, as people write a duration: 2, 2s, 500ms, 5m, 1h30m."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        from klpfleet.controller.policy import parse_duration
        from klpfleet.errors import UsageError

        try:
            return parse_duration(str(value), f"--{param.name}" if param is not None and param.name else "duration")
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def database(ctx: click.Context) -> Database:
    obj = ctx.find_root().obj or {}
    return connect(obj.get("db_url"))
