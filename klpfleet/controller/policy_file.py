"""A rollout's whole policy from a YAML file, with the flags' own names (`max-failed`, `on-failure`, ...) and the
analysis checks. Checked against a JSON schema before anything is planned: each problem is one line naming the
key; a key the schema does not know is refused (a typo must never become a check that silently is not there)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from klpfleet.errors import UsageError
from klpfleet.yamlfile import load_yaml

_DURATION = {"oneOf": [{"type": "string", "maxLength": 40}, {"type": "number", "minimum": 0}]}
_COUNT = {"oneOf": [{"type": "string", "maxLength": 10}, {"type": "integer", "minimum": 0}]}
_LIMIT = {"type": "integer", "minimum": 0, "maximum": 1000}

CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "condition"],
    "properties": {
        "name": {"type": "string", "maxLength": 64},
        "query": {"type": "string", "maxLength": 4096},
        "control": {"type": "string", "maxLength": 4096},
        "compare": {"enum": ["ratio", "difference"]},
        "transition": {"enum": ["p50", "p95", "max"]},
        "condition": {"type": "string", "maxLength": 100},
        "interval": _DURATION,
        "count": {"type": "integer", "minimum": 1, "maximum": 1000},
        "initial_delay": _DURATION,
        "failure_limit": _LIMIT,
        "inconclusive_limit": _LIMIT,
        "consecutive_error_limit": _LIMIT,
        "background": {"type": "boolean"},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "waves": {
            "oneOf": [
                {"type": "string", "maxLength": 200},
                {"type": "array", "minItems": 1, "maxItems": 100, "items": _COUNT},
            ]
        },
        "by": {"type": "string", "maxLength": 64},
        "max-failed": _COUNT,
        "max-refused": _COUNT,
        "bake": _DURATION,
        "health-check": {
            "oneOf": [
                {"type": "string", "maxLength": 4096},
                {"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string", "maxLength": 4096}},
            ]
        },
        "on-failure": {"enum": ["pause", "rollback"]},
        "on-refusal": {"enum": ["pause", "continue"]},
        "retry-refused": {"type": "integer", "minimum": 0, "maximum": 20},
        "retry-delay": _DURATION,
        "forks": {"type": "integer", "minimum": 1, "maximum": 500},
        "transition-timeout": _DURATION,
        "on-stall": {"enum": ["reverse", "wait", "force"]},
        "allow-force": {"type": "boolean"},
        "engine": {"enum": ["auto", "mitogen", "ansible"]},
        "prometheus": {"type": "string", "maxLength": 2048},
        "analysis": {"type": "array", "maxItems": 50, "items": CHECK_SCHEMA},
    },
}


def _where(path: Any) -> str:
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "(top level)"


def _message(error: Any) -> str:
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        hint = ""
        if any("_" in key and key.replace("_", "-") in known for key in unknown):
            hint = " (the keys are the flags' names: dashes, not underscores)"
        return f"unknown key {', '.join(map(repr, unknown))}{hint}; known: {', '.join(known)}"
    if error.validator == "oneOf":
        return f"{str(error.instance)[:60]!r} is not a valid value here"
    return " ".join(str(error.message).split())[:200]


def _duration(value: Any) -> str:
    return f"{value}s" if isinstance(value, (int, float)) else str(value)


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """build_policy's keyword arguments from the file; every schema error, one line each, in one UsageError."""
    import jsonschema

    doc = load_yaml(path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a policy is a mapping of keys such as waves, bake and analysis")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise UsageError("\n".join(f"{path}: {_where(e.absolute_path)}: {_message(e)}" for e in errors[:20]))
    options: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if key == "waves" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif key in ("bake", "retry-delay", "transition-timeout"):
            value = _duration(value)
        elif key in ("max-failed", "max-refused"):
            value = str(value)
        elif key == "health-check" and isinstance(value, list):
            value = shlex.join(value)
        options[name] = value
    return options
