"""Which node runs which host, how a node is named and reached: no SSH needed."""

import shlex
import subprocess

import pytest

from klpfleet.errors import UsageError
from klpfleet.nodes.assign import assign
from klpfleet.nodes.registry import Node, parse_serves, parse_ssh
from klpfleet.nodes.remote import runner_argv


def hosts(n, **labels):
    return [{"name": f"h{i:03d}", "labels": {k: v[i % len(v)] for k, v in labels.items()}} for i in range(n)]


def node(name, serves=None, cpus=None):
    label, value = parse_serves(serves)
    return Node(name, "u", "n", serves_label=label, serves_value=value, capacity={"cpu_count": cpus} if cpus else {})


def test_labelled_hosts_go_to_their_node_and_the_rest_to_unlabelled_ones():
    records = hosts(90, zone=["a", "b", "c"])
    shares, unserved = assign(records, [node("na", "zone=a"), node("nb", "zone=b"), node("any")])
    assert {r["labels"]["zone"] for r in shares["na"]} == {"a"} and len(shares["na"]) == 30
    assert {r["labels"]["zone"] for r in shares["nb"]} == {"b"} and len(shares["nb"]) == 30
    assert {r["labels"]["zone"] for r in shares["any"]} == {"c"} and not unserved


def test_hosts_no_node_serves_are_reported():
    shares, unserved = assign(hosts(6, zone=["a", "b"]), [node("na", "zone=a")])
    assert len(shares["na"]) == 3 and [r["labels"]["zone"] for r in unserved] == ["b"] * 3


def test_unlabelled_nodes_share_by_capacity_and_adding_one_moves_only_its_hosts():
    records = hosts(3000)
    before, _ = assign(records, [node("small", cpus=2), node("big", cpus=6)])
    assert 0.2 < len(before["small"]) / 3000 < 0.3  # weight 2 of 8
    after, _ = assign(records, [node("small", cpus=2), node("big", cpus=6), node("new", cpus=8)])
    where_before = {r["name"]: n for n, rs in before.items() for r in rs}
    moved = [r["name"] for n, rs in after.items() for r in rs if where_before[r["name"]] != n]
    assert moved and all(h in {r["name"] for r in after["new"]} for h in moved)  # nothing moves elsewhere
    again, _ = assign(list(reversed(records)), [node("new", cpus=8), node("big", cpus=6), node("small", cpus=2)])
    assert {n: sorted(r["name"] for r in rs) for n, rs in again.items()} == {
        n: sorted(r["name"] for r in rs) for n, rs in after.items()
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("runner@10.0.1.5", ("runner", "10.0.1.5", 22)), ("n1.example:2222", ("me", "n1.example", 2222)),
     ("u@[::1]:22", ("u", "::1", 22))],
)  # fmt: skip
def test_ssh_targets(text, expected):
    assert parse_ssh(text, "me") == expected


@pytest.mark.parametrize("text", ["u@host;rm -rf /", "u@host:0", "u@host:99999", "@host", "u@ho st"])
def test_bad_ssh_targets_are_refused(text):
    with pytest.raises(UsageError):
        parse_ssh(text, "me")


def test_the_runner_path_is_a_parameter_never_shell_text(tmp_path):
    odd = tmp_path / "dir; touch pwned" / "ansible-runner"
    odd.parent.mkdir()
    odd.write_text('#!/bin/sh\necho "ran $*"\n')
    odd.chmod(0o755)
    argv = runner_argv(Node("n", "u", "h", runner=str(odd)), "worker", "--worker-info")
    out = subprocess.run(["sh", "-c", shlex.join(argv)], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout == "ran worker --worker-info\n" and not (tmp_path / "pwned").exists()


def test_node_commands_refuse_bad_input_in_one_line(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    assert cli("--db", url, "db", "upgrade").code == 0
    bad = cli("--db", url, "node", "add", "n1", "--ssh", "u@host:99999", "--no-check")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1 and "Traceback" not in bad.err
    bad = cli("--db", url, "node", "add", "n1", "--ssh", "u@h", "--serves", "zone", "--no-check")
    assert bad.code == 2 and "LABEL=VALUE" in bad.err
    assert cli("--db", url, "node", "add", "n1", "--ssh", "u@h", "--serves", "zone=a", "--no-check").code == 0
    again = cli("--db", url, "node", "add", "n1", "--ssh", "u@h", "--no-check")
    assert again.code == 2 and "exists" in again.err
    gone = cli("--db", url, "node", "remove", "nope")
    assert gone.code == 2 and "no execution node named 'nope'" in gone.err
    listed = cli("--db", url, "node", "list", "-o", "json").json()["data"]
    assert [n["name"] for n in listed["nodes"]] == ["n1"] and listed["nodes"][0]["serves"] == "zone=a"
    assert cli("--db", url, "node", "remove", "n1").code == 0
    assert cli("--db", url, "node", "list", "-o", "json").json()["data"]["nodes"] == []


def test_a_node_job_carries_no_secret_and_no_template(tmp_path, monkeypatch):
    """What is streamed to a node: the playbooks, the collection (no tests), the .ko, an inventory whose every
    value is `!unsafe`, and no database URL or password from the controller's environment."""
    from klpfleet.nodes.dispatch import build_job
    from klpfleet.runs.types import RunRequest

    secret = "postgresql://klp:S3cretPassw0rd@db.internal/klpfleet"
    monkeypatch.setenv("KLPFLEET_DB", secret)
    ko = tmp_path / "lp.ko"
    ko.write_bytes(b"\x7fELF not really")
    hostile = "{{ lookup('pipe', 'touch /tmp/klpfleet-pwned') }}"
    record = {"name": "h1", "address": None, "port": None, "user": None, "key_file": None,
              "vars": {"note": hostile}, "labels": {"zone": "a"}}  # fmt: skip
    request = RunRequest(None, "apply.yml", [record], {"klp_patch_src": str(ko), "klp_patch_sha256": "0" * 64},
                         tmp_path / "runs", "r1-w1-t1", 20)  # type: ignore[arg-type]  # fmt: skip
    job = build_job(tmp_path / "job", request, [record], "r1-w1-t1@n1")
    files = {p.relative_to(job.private_data_dir).as_posix(): p for p in job.private_data_dir.rglob("*") if p.is_file()}
    assert "project/apply.yml" in files and "project/files/lp.ko" in files and "inventory/hosts.yml" in files
    assert "project/collections/ansible_collections/klpfleet/livepatch/plugins/modules/patch.py" in files
    assert not any("/tests/" in f or "__pycache__" in f for f in files)
    import yaml

    class Tagged(yaml.SafeLoader):
        pass

    Tagged.add_constructor("!unsafe", lambda loader, node: ("unsafe", loader.construct_scalar(node)))
    inventory = yaml.load(files["inventory/hosts.yml"].read_text(), Loader=Tagged)
    assert inventory[("unsafe", "all")][("unsafe", "hosts")][("unsafe", "h1")][("unsafe", "note")] == (
        "unsafe",
        hostile,
    )
    # Extra vars travel in the job's env/extravars (`-e @file`), every string `!unsafe`; the .ko is found in the
    # playbook's files/ on the node.
    extravars = yaml.load(files["env/extravars"].read_text(), Loader=Tagged)
    assert extravars[("unsafe", "klp_patch_src")] == ("unsafe", "lp.ko")
    everything = b"".join(p.read_bytes() for p in files.values()) + repr(job.envvars).encode()
    assert b"S3cretPassw0rd" not in everything and job.envvars["KLPFLEET_DB"] == ""
