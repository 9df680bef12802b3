"""Property: whatever playbook a user writes with the collection's modules, the database ends up saying what the
modules did. Hypothesis composes random playbooks (plain tasks, loops, failed_when, ignore_errors, async,
delegation, removals, reads) over a simulated fleet; after each real ansible-playbook run, every host patch
the database calls applied is enabled on that host's kernel and every enabled patch is recorded applied."""

from __future__ import annotations

import itertools

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .ansiblehelpers import playbook
from .controllerhelpers import enabled_on
from .test_recording_ways import recorded, ways_fleet

pytestmark = pytest.mark.ansible

HOSTS = ["sim-01", "sim-02", "sim-03"]
PATCHES = ["lp_a", "lp_b"]
WRAPPERS = ["plain", "loop", "failed_when", "ignore_errors", "async", "delegated"]


def task(kind: str, patch: str, wrapper: str, hosts: list[str]) -> dict:
    when = {"when": f"inventory_hostname in {hosts!r}"}
    if kind == "read":
        if wrapper == "async":
            return {"name": "read", "klpfleet.livepatch.patch_info": None, "async": 30, "poll": 1, **when}
        return {"name": "read", "klpfleet.livepatch.patch_info": None, **when}
    args: dict = (
        {"src": f"{{{{ ko_{patch} }}}}", "transition_timeout": 5}
        if kind == "apply"
        else {"name": patch, "state": "absent", "transition_timeout": 5}
    )
    t: dict = {"name": f"{kind} {patch}", "klpfleet.livepatch.patch": args, "ignore_errors": True, **when}
    if wrapper == "loop":
        key = "src" if kind == "apply" else "name"
        args[key] = "{{ item }}"
        t["loop"] = [f"{{{{ ko_{p} }}}}" if kind == "apply" else p for p in PATCHES]
    elif wrapper == "failed_when":
        t["failed_when"] = False
    elif wrapper == "async":
        t.update(async_=60, poll=1)
    elif wrapper == "delegated":
        # Run on sim-03 whatever host the task is for, as a jump host would.
        t.update(delegate_to="sim-03", run_once=True)
        args["sim_root"] = "{{ hostvars['sim-03'].klp_sim_root }}"
        t.pop("when")
    return t


steps = st.lists(
    st.tuples(
        st.sampled_from(["apply", "apply", "remove", "read"]),
        st.sampled_from(PATCHES),
        st.sampled_from(WRAPPERS),
        st.lists(st.sampled_from(HOSTS), min_size=1, max_size=3, unique=True),
    ),
    min_size=2,
    max_size=6,
)
counter = itertools.count()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_the_database_says_what_the_modules_did(tmp_path_factory, steps):
    tmp = tmp_path_factory.mktemp(f"prop{next(counter)}")
    url = f"sqlite:///{tmp / 'k.db'}"
    db, kos = ways_fleet(tmp, url)
    tasks = [task(*s) for s in steps]
    text = yaml.safe_dump([{"hosts": ",".join(HOSTS), "gather_facts": False, "tasks": tasks}], sort_keys=False)
    book = tmp / "random.yml"
    book.write_text(text.replace("async_:", "async:"))
    proc = playbook(
        tmp / "fleet" / "inventory.yml",
        book,
        "-e",
        f"ko_lp_a={kos['lp_a']}",
        "-e",
        f"ko_lp_b={kos['lp_b']}",
        db_url=url,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    states, _, _ = recorded(db)
    recorded_applied = {key for key, state in states.items() if state == "applied"}
    on_hosts = {(h, p) for h in HOSTS for p in enabled_on(tmp, h)}
    assert recorded_applied == on_hosts, text
    refused = {key for key, state in states.items() if state == "refused"}
    assert refused <= {("sim-02", "lp_b")}, text
