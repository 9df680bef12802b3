"""Prometheus' HTTP API, read as hostile: an instant query, bounded in time and size, its answer checked for
shape before one number of it is believed.

Hand-written on urllib: the Python clients for this API (prometheus-api-client) bring pandas and matplotlib for
what is one POST and one JSON document.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

MAX_RESPONSE = 1024 * 1024  # bytes: a check reads a handful of series, never a dump of the database
MAX_SERIES = 1000
QUERY_TIMEOUT = 10.0  # seconds per query: a backend slower than this is an error, counted as such


class BackendError(Exception):
    """The metrics backend did not answer a usable value: down, slow, refusing, or saying something malformed."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float  # NaN and infinities as Prometheus gives them; the check decides what they mean


def check_url(url: str) -> str:
    """An http(s) base URL without credentials or a query string; the error says why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL would be written into the rollout's policy; use a proxy")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no query or fragment")
    return url.rstrip("/")


class Prometheus:
    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT) -> None:
        self.url = check_url(url)
        self.timeout = timeout

    def query(self, promql: str) -> list[Sample]:
        """The instant query's samples (a scalar is one sample without labels)."""
        body = urllib.parse.urlencode({"query": promql, "timeout": f"{self.timeout:g}s"}).encode()
        request = urllib.request.Request(  # noqa: S310 - check_url allows http(s) only
            f"{self.url}/api/v1/query",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as exc:
            raise BackendError(f"Prometheus answered HTTP {exc.code}: {_error_of(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"Prometheus at {self.url} unreachable: {reason}") from None
        if len(raw) > MAX_RESPONSE:
            raise BackendError(f"Prometheus' answer is larger than {MAX_RESPONSE} bytes")
        return parse_answer(raw)


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read(4096))
        return str(doc.get("error", "")).replace("\n", " ")[:300] or exc.reason
    except (ValueError, OSError, AttributeError):
        return str(exc.reason)[:300]


def _number(value: Any) -> float:
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
        raise BackendError('Prometheus\' answer has a sample that is not [time, "value"]')
    try:
        return float(value[1])  # "NaN", "+Inf" included
    except ValueError:
        raise BackendError(f"Prometheus' answer has a value that is not a number: {value[1][:40]!r}") from None


def parse_answer(raw: bytes) -> list[Sample]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BackendError("Prometheus' answer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        error = str(doc.get("error", "")).replace("\n", " ")[:300] if isinstance(doc, dict) else ""
        raise BackendError(f"Prometheus refused the query: {error or 'no success status'}")
    kind, result = doc["data"].get("resultType"), doc["data"].get("result")
    if kind == "scalar":
        return [Sample({}, _number(result))]
    if kind != "vector":
        raise BackendError(f"the query returned a {str(kind)[:20]}; a check needs an instant vector or a scalar")
    if not isinstance(result, list):
        raise BackendError("Prometheus' answer has no list of series")
    if len(result) > MAX_SERIES:
        raise BackendError(f"the query returned {len(result)} series; aggregate it (a check reads a few)")
    samples = []
    for series in result:
        if not isinstance(series, dict) or not isinstance(series.get("metric", {}), dict):
            raise BackendError("Prometheus' answer has a series that is not a mapping")
        labels = {str(k)[:100]: str(v)[:200] for k, v in list(series.get("metric", {}).items())[:30]}
        samples.append(Sample(labels, _number(series.get("value"))))
    return samples


def finite(samples: list[Sample]) -> bool:
    return all(math.isfinite(s.value) for s in samples)
