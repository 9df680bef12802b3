"""Property: over random simulated fleets and patch sets, a pre-flight's `refuse` is exactly the hosts whose kernel
then refuses the load, with the klp_error the patch module reports, so a pre-flight never leaves out a host that
would have taken the patch, and never plans one it could have known would refuse.

Each example: hosts with random signature policies, lockdown and livepatch support; patches already loaded
(random system states, replace or not, on shared functions); the database learns the fleet from a real probe;
then the candidate patch is pre-flighted and loaded on every host by the collection's own host code."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for
from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory
from klpfleet.probe.run import probe
from klpfleet.reads.preflight import REFUSE, check_patch
from klpfleet.registry.patches import add_patch, get_patch
from klpfleet.sim.fleet import create_fleet
from klpfleet.sim.spec import normalize, write_ko

pytestmark = pytest.mark.ansible
RELEASE = "6.1.0-56-amd64"
FAST = {"transition_timeout": 5, "busy_retries": 1, "busy_delay": 0.1}
FUNCS = ["cmdline_proc_show", "meminfo_proc_show", "tcp_send_challenge_ack"]

hosts = st.lists(
    st.fixed_dictionaries(
        {
            "sig_enforce": st.booleans(),
            "lockdown": st.sampled_from(["none"] * 4 + ["integrity", "confidentiality"]),
            "livepatch": st.sampled_from([True] * 7 + [False]),
        }
    ),
    min_size=1,
    max_size=3,
)
states = st.lists(
    st.fixed_dictionaries({"id": st.integers(1, 2), "version": st.integers(1, 3)}),
    max_size=2,
    unique_by=lambda s: s["id"],
)
patches = st.fixed_dictionaries(
    {
        "replace": st.booleans(),
        "states": states,
        "signed": st.booleans(),
        "funcs": st.lists(st.sampled_from(FUNCS), min_size=1, max_size=2, unique=True),
        "release": st.sampled_from([RELEASE, RELEASE, RELEASE, "6.12.41+deb13-amd64"]),
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=hosts, installed=st.lists(patches, max_size=2), candidate=patches)
def test_refuse_is_exactly_what_the_kernel_refuses(tmp_path_factory, fleet, installed, candidate):
    tmp = tmp_path_factory.mktemp("pf")
    names = [f"sim-{i + 1:02d}" for i in range(len(fleet))]
    create_fleet(tmp / "fleet", {"hosts": names, "faults": dict(zip(names, fleet, strict=True)), "speed": 0})
    db = open_database(f"sqlite:///{tmp / 'k.db'}", create=True)
    upgrade(db)

    def ko(name, p):
        spec = {
            "name": name,
            "kernel_release": p["release"],
            "replace": p["replace"],
            "states": p["states"],
            "signed": p["signed"],
            "objects": [{"name": "vmlinux", "funcs": p["funcs"]}],
        }
        return str(write_ko(normalize(spec), tmp / f"{name}.ko"))

    files = {f"lp_installed_{i}": ko(f"lp_installed_{i}", p) for i, p in enumerate(installed)}
    files["lp_candidate"] = ko("lp_candidate", candidate)
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(tmp / "fleet" / "inventory.yml")]), prune=False)
        for path in files.values():
            add_patch(s, path)
    for name in names:  # what is already loaded: whatever the kernel took
        for patch, path in files.items():
            if patch != "lp_candidate":
                with contextlib.suppress(LivepatchError):
                    apply_patch(prims(tmp, name), path, **FAST)
    probed = probe(db, names)  # the database learns the fleet as an operator's would
    assert [p.kernel_release for p in probed] == [RELEASE] * len(names)

    with db.session() as s:
        verdicts = check_patch(s, get_patch(s, "lp_candidate"), names)
    for name in names:
        try:
            apply_patch(prims(tmp, name), files["lp_candidate"], **FAST)
            outcome = None
        except LivepatchError as exc:
            outcome = exc.klp_error
        v = verdicts[name]
        assert (v.verdict == REFUSE) == (outcome is not None), (name, v.as_dict(), outcome)
        assert v.klp_error == outcome, (name, v.as_dict(), outcome)
        event(f"{v.verdict}: {outcome}")


def prims(tmp, name):
    return primitives_for("sim", str(tmp / "fleet" / "hosts" / name))
