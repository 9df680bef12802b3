"""Importing Ansible inventories through ansible-core's inventory manager."""

import textwrap

import pytest
from sqlalchemy import func, select

from klpfleet.db.models import Event, Host


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def ini(tmp_path):
    return write(
        tmp_path / "hosts.ini",
        """
        [web]
        web1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=ops zone=a rack=r1
        web2 ansible_host=10.0.0.2 zone=b ansible_password=hunter2 ansible_become_password=root42

        [db]
        db1 ansible_host=10.0.1.1 zone=a klp_backend=sim klp_sim_root=/tmp/sim/db1

        [web:vars]
        ansible_ssh_private_key_file=/keys/web
        klp_api_token=do-not-store
    """,
    )


def host_rows(db):
    with db.session() as s:
        return {h.name: h for h in s.scalars(select(Host))}


def event_count(db):
    with db.session() as s:
        return s.scalar(select(func.count(Event.id)))


def test_ini_import_keeps_connection_vars_groups_and_labels_but_no_secrets(cli, sqlite_db, sqlite_url, ini):
    result = cli("--db", sqlite_url, "inventory", "import", "-i", ini, "-o", "json")
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert [data[k] for k in ("added", "updated", "unchanged", "removed")] == [3, 0, 0, 0]
    detail = cli("--db", sqlite_url, "host", "web1", "-o", "json").json()["data"]
    assert (detail["address"], detail["port"], detail["user"]) == ("10.0.0.1", 2222, "ops")
    assert detail["groups"] == ["web"]
    assert detail["labels"] == {"rack": "r1", "zone": "a"}
    rows = host_rows(sqlite_db)
    assert rows["web1"].key_file == "/keys/web"  # from [web:vars]
    assert rows["db1"].vars == {"klp_backend": "sim", "klp_sim_root": "/tmp/sim/db1"}
    assert rows["db1"].port is None
    dumped = str([(h.vars, h.address, h.user, h.key_file) for h in rows.values()])
    for secret in ("hunter2", "root42", "do-not-store"):
        assert secret not in dumped
    with sqlite_db.session() as s:
        assert "hunter2" not in str([e.details for e in s.scalars(select(Event))])


def test_import_is_idempotent_and_counts_updates_and_prune(cli, sqlite_db, sqlite_url, ini, tmp_path):
    cli("--db", sqlite_url, "inventory", "import", "-i", ini)
    events_after_first = event_count(sqlite_db)
    second = cli("--db", sqlite_url, "inventory", "import", "-i", ini, "-o", "json").json()["data"]
    assert (second["added"], second["updated"], second["unchanged"], second["removed"]) == (0, 0, 3, 0)
    assert event_count(sqlite_db) == events_after_first  # nothing changed, nothing logged

    smaller = write(
        tmp_path / "smaller.ini",
        """
        [web]
        web1 ansible_host=10.0.0.9 ansible_port=2222 ansible_user=ops zone=a rack=r1
    """,
    )
    no_prune = cli("--db", sqlite_url, "inventory", "import", "-i", smaller, "-o", "json").json()["data"]
    assert (no_prune["updated"], no_prune["removed"]) == (1, 0)
    assert set(host_rows(sqlite_db)) == {"web1", "web2", "db1"}
    pruned = cli("--db", sqlite_url, "inventory", "import", "-i", smaller, "--prune", "-o", "json").json()["data"]
    assert (pruned["unchanged"], pruned["removed"]) == (1, 2)
    assert set(host_rows(sqlite_db)) == {"web1"}
    kinds = [e["kind"] for e in cli("--db", sqlite_url, "events", "--limit", "100", "-o", "json").json()["data"]]
    assert kinds.count("host.removed") == 2 and kinds.count("host.updated") == 1


def test_yaml_and_directory_sources_with_group_vars(cli, sqlite_db, sqlite_url, tmp_path):
    inv = tmp_path / "inv"
    write(
        inv / "fleet.yml",
        """
        all:
          children:
            prod:
              hosts:
                app-01: {ansible_host: 192.0.2.10}
                app-02: {ansible_host: 192.0.2.11, zone: east}
    """,
    )
    write(
        inv / "group_vars" / "prod.yml",
        """
        zone: west
        ansible_user: deploy
        klp_labels: {tier: app}
    """,
    )
    result = cli("--db", sqlite_url, "inventory", "import", "-i", inv, "-o", "json")
    assert result.code == 0, result.err
    rows = cli("--db", sqlite_url, "hosts", "-o", "json").json()["data"]
    labels = {r["name"]: r["labels"] for r in rows}
    assert labels == {"app-01": {"tier": "app", "zone": "west"}, "app-02": {"tier": "app", "zone": "east"}}
    assert host_rows(sqlite_db)["app-01"].user == "deploy"
    by_label = cli("--db", sqlite_url, "hosts", "--label", "zone=east", "-o", "json").json()["data"]
    assert [r["name"] for r in by_label] == ["app-02"]
    by_group = cli("--db", sqlite_url, "hosts", "--group", "prod", "-o", "json").json()["data"]
    assert len(by_group) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("all:\n  hosts: [unclosed\n", "cannot read inventory"),
        ("[web\nweb1\n", "cannot read inventory"),
        ("[web]\nweb1 ansible_port=twenty\n", "is not a number"),
        ("[web]\nweb1 ansible_port=70000\n", "out of range"),
        ("all:\n  hosts:\n    'bad;rm -rf /':\n", "refusing inventory host name"),
        ('all:\n  hosts:\n    "$(reboot)":\n', "refusing inventory host name"),
        (f"all:\n  hosts:\n    {'a' * 300}:\n", "refusing inventory host name"),
    ],
)
def test_malformed_or_hostile_inventory_is_one_line_and_changes_nothing(
    cli, sqlite_db, sqlite_url, ini, tmp_path, content, message
):
    cli("--db", sqlite_url, "inventory", "import", "-i", ini)
    before = (sorted(host_rows(sqlite_db)), event_count(sqlite_db))
    bad = tmp_path / ("bad.yml" if content.startswith("all") else "bad.ini")
    bad.write_text(content)
    result = cli("--db", sqlite_url, "inventory", "import", "-i", bad, "--prune")
    assert result.code != 0
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert (sorted(host_rows(sqlite_db)), event_count(sqlite_db)) == before


def test_missing_source_is_refused(cli, sqlite_db, sqlite_url, tmp_path):
    result = cli("--db", sqlite_url, "inventory", "import", "-i", tmp_path / "none.ini")
    assert result.code == 2
    assert "does not exist" in result.err


def test_import_on_postgres(cli, pg_url, ini):
    assert cli("--db", pg_url, "db", "upgrade").code == 0
    first = cli("--db", pg_url, "inventory", "import", "-i", ini, "-o", "json").json()["data"]
    again = cli("--db", pg_url, "inventory", "import", "-i", ini, "-o", "json").json()["data"]
    assert (first["added"], again["unchanged"]) == (3, 3)


def test_collection_inventory_plugin_as_a_source(cli, sqlite_db, sqlite_url, ini, tmp_path):
    """A source handled by a collection's inventory plugin: here klpfleet.livepatch.fleet reading another
    klpfleet database, as amazon.aws.aws_ec2 would read a cloud."""
    other = tmp_path / "other.db"
    assert cli("--db", other, "db", "upgrade").code == 0
    assert cli("--db", other, "inventory", "import", "-i", ini).code == 0
    source = tmp_path / "other.klpfleet.yml"
    source.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {other}\n")
    result = cli("--db", sqlite_url, "inventory", "import", "-i", source, "-o", "json")
    assert result.code == 0, result.err
    assert result.json()["data"]["added"] == 3
    detail = cli("--db", sqlite_url, "host", "web1", "-o", "json").json()["data"]
    assert (detail["address"], detail["port"], detail["labels"]["zone"]) == ("10.0.0.1", 2222, "a")


@pytest.mark.parametrize("precedence", ["default", "reversed"])
def test_inventory_vars_equal_ansibles_own_for_every_host(tmp_path, monkeypatch, precedence):
    """klpfleet merges a host's inventory vars itself (once per set of groups, not per host); the result must
    be exactly what ansible-core's VariableManager gives, whatever the nesting, priorities, group_vars and
    host_vars directories and the configured precedence."""
    from ansible import constants as C
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    from klpfleet.inventory.ansible_vars import InventoryVars
    from klpfleet.inventory.sources import DEFAULT_LABEL_KEYS, wanted_vars

    if precedence == "reversed":
        monkeypatch.setattr(C, "VARIABLE_PRECEDENCE", list(reversed(C.VARIABLE_PRECEDENCE)))
    inv = tmp_path / "inv"
    write(
        inv / "a.ini",
        """
        [web]
        web1 zone=a klp_on_stall=reverse
        web2
        [db]
        db1 ansible_port=2200
        [prod:children]
        web
        db
        [web:vars]
        zone=w
        ansible_group_priority=5
        klp_transition_timeout=90
        [all:vars]
        ansible_user=ops
        klp_transition_timeout=30
    """,
    )
    write(
        inv / "b.yml",
        """
        all:
          children:
            canary:
              vars: {klp_transition_timeout: 45, rack: r9}
              hosts:
                web2: {}
                lone: {ansible_host: 192.0.2.9}
    """,
    )
    write(inv / "group_vars" / "all.yml", "klp_busy_retries: 3\nzone: everywhere\n")
    write(inv / "group_vars" / "prod" / "one.yml", "klp_busy_retries: 5\nregion: eu\n")
    write(inv / "group_vars" / "prod" / "two.yml", "klp_labels: {tier: app}\n")
    write(inv / "group_vars" / "canary.yml", "zone: c\nklp_labels: {tier: canary}\n")
    write(inv / "host_vars" / "web2.yml", "klp_busy_retries: 9\n")
    write(inv / "host_vars" / "lone" / "x.yml", "region: us\n")

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(inv)])
    reference = VariableManager(loader=loader, inventory=manager)
    everything = InventoryVars(loader, manager, [str(inv)])
    kept = InventoryVars(loader, manager, [str(inv)], wanted_vars(DEFAULT_LABEL_KEYS))
    hosts = manager.get_hosts()
    assert len(hosts) == 4
    for host in hosts:
        expected = reference.get_vars(host=host, include_hostvars=False)
        got, groups = everything.of(host)
        assert groups == [g.name for g in host.get_groups()]
        assert kept.of(host)[0] == {k: v for k, v in expected.items() if k in wanted_vars(DEFAULT_LABEL_KEYS)}
        # Magic vars are Ansible's own, facts are never kept by klpfleet (and this run gathered none).
        magic = {*reference._get_magic_variables(None, host, None, False, None, None), "ansible_facts"}
        assert {k: v for k, v in got.items() if k not in magic} == {
            k: v for k, v in expected.items() if k not in magic
        }, host.name


def test_unchanged_static_sources_are_not_parsed_again(cli, sqlite_db, sqlite_url, tmp_path, monkeypatch):
    """A re-import is answered from the last import's fingerprint only when nothing it depends on changed:
    the source's bytes, its group_vars/host_vars, the options, Ansible's settings, and the hosts themselves."""
    inv = tmp_path / "site"
    source = write(inv / "hosts.ini", "[web]\nweb1 zone=a\nweb2 zone=b\n")

    def imported(*args):
        result = cli("--db", sqlite_url, "inventory", "import", "-i", source, *args, "-o", "json")
        assert result.code == 0, result.err
        return result.json()["data"]

    assert imported()["added"] == 2
    events_before = event_count(sqlite_db)
    again = imported()
    assert again["skipped"] and again["unchanged"] == 2 and event_count(sqlite_db) == events_before  # wrote nothing
    assert not imported("--reread")["skipped"]

    write(inv / "group_vars" / "web.yml", "klp_on_stall: wait\n")
    assert imported()["updated"] == 2  # a group_vars file beside the source counts
    assert imported()["skipped"]
    assert not imported("--label", "rack")["skipped"]  # other options, another reading
    monkeypatch.setenv("ANSIBLE_PRECEDENCE", "groups_inventory,all_inventory")
    assert not imported()["skipped"]  # another Ansible setting, another reading
    monkeypatch.delenv("ANSIBLE_PRECEDENCE")
    assert not imported()["skipped"]
    source.write_text("[web]\nweb1 zone=a\nweb2 zone=c\n")
    changed = imported()
    assert not changed["skipped"] and changed["updated"] == 1

    other = write(tmp_path / "other.ini", "[db]\ndb1\n")
    assert cli("--db", sqlite_url, "inventory", "import", "-i", other).code == 0
    assert not imported()["skipped"]  # a host was added since: the database is not what the last import left

    script = tmp_path / "dynamic.sh"
    script.write_text('#!/bin/sh\necho \'{"all": {"hosts": ["dyn1"]}}\'\n')
    script.chmod(0o755)
    for _ in range(2):  # a script may answer differently every time: always run
        result = cli("--db", sqlite_url, "inventory", "import", "-i", script, "-o", "json")
        assert result.code == 0, result.err
        assert not result.json()["data"]["skipped"]


def test_a_large_inventory_is_converted_by_two_processes_with_the_same_result(tmp_path, monkeypatch):
    """Above PARALLEL_FROM hosts a forked child converts the second half: same hosts, same order, and a bad
    host in the child's half is the same one-line error."""
    from klpfleet.errors import UsageError
    from klpfleet.inventory import sources as inventory

    lines = ["[web]"] + [f"web{n:03d} ansible_host=10.0.0.{n % 250} zone=z{n % 3}" for n in range(60)]
    lines += ["[db]", "db1 ansible_port=2222", "[web:vars]", "klp_on_stall=wait"]
    source = write(tmp_path / "hosts.ini", "\n".join(lines) + "\n")
    alone = inventory.read_inventory([str(source)])
    monkeypatch.setattr(inventory, "PARALLEL_FROM", 10)
    together = inventory.read_inventory([str(source)])
    assert together == alone and len(together) == 61
    assert (together[-1].name, together[-1].port) == ("db1", 2222)

    def broken_pipe(*args, **kwargs):
        raise RuntimeError("the child dies before it answers")

    with monkeypatch.context() as patched:  # the child dies: this process converts its half itself
        patched.setattr(inventory.pickle, "dump", broken_pipe)
        assert inventory.read_inventory([str(source)]) == alone
    assert together[-2].vars == {"klp_on_stall": "wait"} and together[-2].labels == {"zone": "z2"}

    source.write_text(source.read_text().replace("web059 ansible_host", "web059 ansible_port=x ansible_host"))
    with pytest.raises(UsageError, match="host 'web059': ansible_port 'x' is not a number"):
        inventory.read_inventory([str(source)])
