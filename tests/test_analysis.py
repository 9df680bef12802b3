"""Analysis without a backend: conditions, judging, placeholders, Prometheus' answers read as hostile, the policy
file's schema. The runs against a real Prometheus are in test_analysis_prometheus.py."""

from __future__ import annotations

import json
import math

import pytest

from klpfleet.analysis.checks import parse_checks, parse_condition
from klpfleet.analysis.measure import CheckRun, Measurement, Result, run_checks, take
from klpfleet.analysis.placeholders import Scope, fill
from klpfleet.analysis.prometheus import BackendError, Sample, parse_answer
from klpfleet.controller.policy import parse_duration
from klpfleet.errors import UsageError

SCOPE = Scope(rollout=7, wave=1, wave_hosts=("web1.example.com",), control_hosts=("web-2", "db[3]"))


def check(**doc):
    return parse_checks([{"name": "c", "condition": "< 0.01", "query": "up", **doc}], parse_duration)[0]


class Backend:
    def __init__(self, *answers):
        self.answers, self.queries = list(answers), []

    def query(self, promql):
        self.queries.append(promql)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [Sample({}, v) for v in answer]


@pytest.mark.parametrize(
    ("text", "passing", "failing"),
    [
        ("< 0.01", [0.0, 0.0099, -1], [0.01, 1, math.inf]),
        ("<= 0.01", [0.01], [0.0101]),
        (">= 0.99", [0.99, 1], [0.98]),
        ("> 0", [1e-9], [0, -1]),
        ("0.9..1.1", [0.9, 1.0, 1.1], [0.89, 1.11]),
    ],
)
def test_conditions(text, passing, failing):
    condition = parse_condition(text, "x")
    assert all(condition.holds(v) for v in passing)
    assert not any(condition.holds(v) for v in failing)


@pytest.mark.parametrize("text", ["", "<", "== 1", "< abc", "1..0", "< 1; drop", 5])
def test_bad_conditions_are_refused(text):
    with pytest.raises(UsageError):
        parse_condition(text, "x")


def test_an_empty_result_or_nan_is_inconclusive_never_a_pass():
    c = check()
    assert take(c, Backend([]), SCOPE, []).result == Result.INCONCLUSIVE
    assert take(c, Backend([math.nan]), SCOPE, []).result == Result.INCONCLUSIVE
    assert take(c, Backend([0.001]), SCOPE, []).result == Result.PASSED
    assert take(c, Backend([0.001, 0.5]), SCOPE, []).result == Result.FAILED  # every series must hold
    assert take(c, Backend(BackendError("down")), SCOPE, []).result == Result.ERROR
    assert take(c, None, SCOPE, []).result == Result.ERROR  # no backend configured is never a pass


def test_canary_against_control():
    c = check(query='avg(x{host=~"$wave_hosts"})', control='avg(x{host=~"$control_hosts"})', condition="< 1.5")
    assert take(c, Backend([0.002], [0.001]), SCOPE, []).result == Result.FAILED  # twice the control's rate
    assert take(c, Backend([0.001], [0.001]), SCOPE, []).result == Result.PASSED
    assert take(c, Backend([0.0], [0.0]), SCOPE, []).result == Result.PASSED
    assert take(c, Backend([0.01], [0.0]), SCOPE, []).value == math.inf  # from nothing to something fails
    assert take(c, Backend([1, 2], [1]), SCOPE, []).result == Result.INCONCLUSIVE  # which series is the wave?
    last_wave = Scope(7, 4, ("a",), ())
    assert take(c, Backend(), last_wave, []).result == Result.SKIPPED  # nothing left to compare with
    d = check(query="a", control="b", compare="difference", condition="< 0.01")
    assert take(d, Backend([0.05], [0.001]), SCOPE, []).value == pytest.approx(0.049)


def test_placeholders_are_escaped_regexes_in_a_promql_string():
    backend = Backend([1.0], [1.0])
    c = check(
        query='x{host=~"$wave_hosts",r="$rollout",w="$wave"}', control='x{host=~"$control_hosts"}', condition=">0"
    )
    take(c, backend, SCOPE, [])
    assert backend.queries[0] == 'x{host=~"web1\\\\.example\\\\.com",r="7",w="1"}'
    assert backend.queries[1] == 'x{host=~"web\\\\-2|db\\\\[3\\\\]"}'
    huge = Scope(1, 1, tuple(f"host-{i:05d}.example.com" for i in range(10_000)), ("x",))
    m = take(check(query='x{host=~"$wave_hosts"}'), Backend(), huge, [])
    assert m.result == Result.INCONCLUSIVE and "klpfleet_rollout_host" in (m.reason or "")
    with pytest.raises(UsageError, match=r"\$hosts is not a placeholder"):
        check(query='x{host=~"$hosts"}')
    assert fill("$wave_hosts_x", SCOPE) == "$wave_hosts_x"  # not a placeholder, left alone (refused at parse)


def test_transition_checks_need_no_backend():
    c = parse_checks([{"name": "t", "transition": "p95", "condition": "< 5"}], parse_duration)[0]
    assert c.count == 1 and not c.needs_backend
    assert take(c, None, SCOPE, [1.0] * 20 + [9.0]).result == Result.PASSED  # one slow host in 21: not the p95
    assert take(c, None, SCOPE, [9.0, 9.5]).result == Result.FAILED
    assert take(c, None, SCOPE, []).result == Result.INCONCLUSIVE


def judge_after(c, results):
    run = CheckRun(c)
    for r in results:
        run.add(Measurement(c.name, r, reason=str(r)))
    return run.result


def test_limits_as_argo_counts_them():
    P, F, N, E = Result.PASSED, Result.FAILED, Result.INCONCLUSIVE, Result.ERROR
    assert judge_after(check(count=3), [P, P, P]) == P
    assert judge_after(check(count=3), [P, F]) == F  # failure_limit 0: the first failure ends it
    assert judge_after(check(count=3, failure_limit=1), [F, P, P]) == P
    assert judge_after(check(count=3), [N]) == N
    assert judge_after(check(count=4, consecutive_error_limit=1), [E, P, E]) is None  # not in a row: goes on
    assert judge_after(check(count=3, consecutive_error_limit=1), [E, E]) == N
    assert judge_after(check(count=2, consecutive_error_limit=5), [E, E]) == N  # nothing passed: never a pass


def test_run_checks_stops_at_the_first_failure_and_on_a_halt():
    clock = [0.0]
    taken = []

    def measure(c):
        taken.append((c.name, clock[0]))
        return Measurement(c.name, Result.FAILED if c.name == "bad" and clock[0] >= 2 else Result.PASSED)

    def wait(seconds):
        clock[0] += seconds

    good, bad = (check(name=n, interval="1s", count=5) for n in ("good", "bad"))
    verdict = run_checks([good, bad], measure, wait, lambda m, r: None, clock=lambda: clock[0])
    assert verdict.result == Result.FAILED and "bad" in verdict.reason
    assert max(t for _, t in taken) == 2.0  # the good check's remaining measurements were not taken
    halted = run_checks([good], measure, lambda s: "pause", lambda m, r: None, clock=lambda: clock[0])
    assert halted == "pause"


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>",
        b'{"status": "error", "error": "parse error"}',
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 5]}]}}',
        b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}}',
        json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{}] * 5000}}).encode(),
    ],
)
def test_hostile_answers_are_backend_errors(raw):
    with pytest.raises(BackendError):
        parse_answer(raw)


def test_answers_that_parse():
    vector = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1,"NaN"]}]}}'
    [sample] = parse_answer(vector)
    assert sample.labels == {"a": "b"} and math.isnan(sample.value)
    [scalar] = parse_answer(b'{"status":"success","data":{"resultType":"scalar","result":[1,"0.5"]}}')
    assert scalar.value == 0.5


def test_a_policy_file_with_an_unknown_key_or_a_bad_condition_plans_nothing(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    assert cli("--db", url, "db", "upgrade").code == 0
    cases = {
        "max_failed: 1\n": "unknown key 'max_failed' (the keys are the flags' names: dashes, not underscores)",
        "analysis: [{name: e, query: up, condition: 'about 1'}]\nprometheus: http://127.0.0.1:1\n": (
            "analysis[0] (e).condition: 'about 1' is not a condition"
        ),
        "analysis: [{name: e, query: up, condition: '< 1', intervall: 5s}]\n": "analysis[0]: unknown key 'intervall'",
        "analysis: [{name: e, query: up, condition: '< 1'}]\n": "give --prometheus URL",
        "prometheus: http://u:pw@prom:9090\n": "credentials in the URL",
        "waves: [1, 10%]\nforks: 0\n": "forks: 0 is less than the minimum of 1",
        "- a list\n": "a policy is a mapping",
    }
    for text, said in cases.items():
        path = tmp_path / "p.yml"
        path.write_text(text)
        result = cli("--db", url, "rollout", "create", "x", "--policy", str(path))
        assert result.code == 2, (text, result.err)
        assert said in result.err, (text, result.err)
        assert "Traceback" not in result.err
    assert cli("--db", url, "rollout", "list", "-o", "json").json()["data"] == []


@pytest.mark.ansible
def test_a_stored_analysis_that_no_longer_parses_pauses_the_rollout(cli, tmp_path, monkeypatch):
    """The policy is a database row: edited by hand (or by another controller) it is read as hostile."""
    from sqlalchemy import update

    from klpfleet.db.models import Rollout

    from .controllerhelpers import enabled_on, fleet_db, register

    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2)
    register(db, tmp_path)
    policy = tmp_path / "p.yml"
    policy.write_text("analysis: [{name: t, transition: p95, condition: '< 30'}]\n")
    created = cli("--db", url, "rollout", "create", "livepatch_cve_2026_1234", "--policy", str(policy), "-o", "json")
    rid = created.json()["data"]["id"]
    with db.session.begin() as s:
        stored = s.get(Rollout, rid).policy
        stored["analysis"][0]["condition"] = "{{ lookup('pipe', 'id') }}"
        s.execute(update(Rollout).where(Rollout.id == rid).values(policy=stored))
    started = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert started.code == 1 and "Traceback" not in started.err
    data = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert data["status"] == "paused"
    assert "the rollout's stored analysis" in data["pause_reason"] and "is not a condition" in data["pause_reason"]
    assert enabled_on(tmp_path, "sim-02") == []  # the next wave never started


def test_reconcile_reads_the_same_policy_file(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    assert cli("--db", url, "db", "upgrade").code == 0
    path = tmp_path / "p.yml"
    path.write_text("bake: 10m\nanalysis: [{name: e, query: up, condition: '< 1', typo: 1}]\n")
    result = cli("--db", url, "reconcile", "--dry-run", "--policy", str(path))
    assert result.code == 2 and "analysis[0]: unknown key 'typo'" in result.err


def test_transition_times_are_believed_only_when_plausible():
    from klpfleet.analysis.measure import transition_seconds

    assert transition_seconds(2) == 2.0 and transition_seconds(0.125) == 0.125
    for hostile in (math.nan, math.inf, -1, True, "5", None, 10**12, [1]):
        assert transition_seconds(hostile) is None, hostile
