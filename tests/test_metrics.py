"""`klpfleet metrics`: the exposition parses with the Prometheus client's own parser, follows the naming rules,
carries no per-host label, and says what `status`, `cves` and `rollout status` say; the textfile is written whole."""

import json
import os
import re

from prometheus_client.parser import text_string_to_metric_families

from klpfleet.controller.plan import create_rollout, make_plan
from klpfleet.controller.policy import build_policy
from klpfleet.db.models import Patch

from .conftest import run_klpfleet
from .test_exposure import NEW, OLD, OTHER, fleet

NAME = re.compile(r"^klpfleet_[a-z][a-z0-9_]*$")


def seeded(url):
    db = fleet(
        url,
        hosts=[(f"h{i}", OLD, True) for i in range(5)]
        + [("down", OLD, False), ("new", NEW, True), ("odd", OTHER, True)],
        patches=[("fix_a", OLD, ["CVE-2026-1111"]), ("fix_b", OLD, [])],
        rows=[
            ("h0", "fix_a", "applied"),
            ("h1", "fix_a", "refused"),
            ("h2", "fix_a", "lost_at_reboot"),
            ("down", "fix_a", "unreachable"),
        ],
        fixes=[("CVE-2026-1111", NEW)],
    )
    with db.session.begin() as s:
        patch = s.query(Patch).filter_by(name="fix_b").one()
        policy = build_policy(waves="2,100%", forks=5)
        create_rollout(s, patch, make_plan(s, patch, ["h0", "h1", "h2", "h3", "h4"], policy), policy, "test")
    return db


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, name, **labels):
    matches = [s.value for s in fams[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_metrics_parse_follow_the_rules_and_agree_with_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    seeded(url)
    proc = run_klpfleet("--db", url, "metrics")
    assert proc.returncode == 0, proc.stderr
    fams = families(proc.stdout)
    for name, fam in fams.items():
        assert NAME.match(name) and fam.type == "gauge" and fam.documentation, name
        assert not name.endswith("_total")  # a suffix for counters only
        for sample in fam.samples:
            assert "host" not in sample.labels  # bounded cardinality: never one series per host

    status = json.loads(run_klpfleet("--db", url, "status", "-o", "json").stdout)["data"]
    assert value(fams, "klpfleet_hosts") == status["hosts"]["total"] == 8
    assert value(fams, "klpfleet_hosts_unreachable") == 1
    assert value(fams, "klpfleet_fleet_health") == {"healthy": 0, "degraded": 1, "critical": 2}[status["health"]]
    for p in status["patches"]:
        for state, count in p["states"].items():
            assert value(fams, "klpfleet_patch_hosts", patch=p["name"], state=state) == count
    assert value(fams, "klpfleet_patch_hosts", patch="fix_a", state="stalled") == 0  # every state, zeros too
    assert value(fams, "klpfleet_kernel_release_hosts", kernel_release=OLD) == 6

    (cve,) = json.loads(run_klpfleet("--db", url, "cves", "-o", "json").stdout)["data"]
    for kind, count in cve["counts"].items():
        assert value(fams, "klpfleet_cve_hosts", cve="CVE-2026-1111", exposure=kind) == count
    assert cve["counts"] == {"covered": 2, "exposed": 5, "unknown": 1}
    for reason, count in cve["exposed_by_reason"].items():
        assert value(fams, "klpfleet_cve_exposed_hosts", cve="CVE-2026-1111", reason=reason) == count

    assert value(fams, "klpfleet_rollouts", status="planned") == 1
    assert value(fams, "klpfleet_rollouts", status="completed") == 0
    assert value(fams, "klpfleet_rollout_wave_hosts", rollout="1", wave="1", outcome="pending") == 2
    assert fams["klpfleet_group_observation_age_seconds"].samples == []  # nobody was ever seen
    assert fams["klpfleet_execution_node_ready"].samples == []  # no nodes: runs are local


def test_execution_nodes_as_their_last_check_found_them(tmp_path):
    from klpfleet.db.engine import open_database
    from klpfleet.nodes.registry import save_check

    url = f"sqlite:///{tmp_path / 'k.db'}"
    seeded(url)
    for name, serves in (("eu1", ["--serves", "zone=eu-1"]), ("eu2", []), ("new", [])):
        added = run_klpfleet("--db", url, "node", "add", name, "--ssh", f"r@{name}", "--no-check", *serves)
        assert added.returncode == 0, added.stderr
    db = open_database(url)
    save_check(db, "eu1", {"cpu_count": 4, "problems": []})
    save_check(db, "eu2", {"problems": ["node_unreachable: connect timed out"]})
    fams = families(run_klpfleet("--db", url, "metrics").stdout)
    assert value(fams, "klpfleet_execution_node_ready", node="eu1", serves="zone=eu-1") == 1
    assert value(fams, "klpfleet_execution_node_ready", node="eu2", serves="") == 0
    assert value(fams, "klpfleet_execution_node_ready", node="new", serves="") == -1
    assert 0 <= value(fams, "klpfleet_execution_node_check_age_seconds", node="eu1") < 60


def test_textfile_is_written_whole_and_bad_input_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    seeded(url)
    target = tmp_path / "textfile" / "klpfleet.prom"
    target.parent.mkdir()
    assert run_klpfleet("--db", url, "metrics", "--textfile", str(target)).returncode == 0
    assert value(families(target.read_text()), "klpfleet_hosts") == 8
    assert os.listdir(target.parent) == ["klpfleet.prom"]  # no temporary file left beside it

    wrong = run_klpfleet("--db", url, "metrics", "--textfile", str(tmp_path / "klpfleet.txt"))
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and ".prom" in wrong.stderr
    missing = run_klpfleet("--db", url, "metrics", "--textfile", str(tmp_path / "nowhere" / "k.prom"))
    assert missing.returncode == 2 and "cannot write" in missing.stderr and "Traceback" not in missing.stderr
    gone = run_klpfleet("--db", f"sqlite:///{tmp_path / 'none.db'}", "metrics")
    assert gone.returncode == 3 and "Traceback" not in gone.stderr
