"""The pre-flight and the function map on real kernels: each verdict is checked against what the kernel then does,
and the map against the VM's own sysfs (its `stack_order` where the kernel has it). Every lab kernel."""

from __future__ import annotations

import json
import re

import pytest

from .ansiblehelpers import ROOT, playbook
from .conftest import run_klpfleet
from .labhelpers import Lab
from .signing import signed
from .test_lab import apply, last_event, livepatches, state

pytestmark = pytest.mark.lab


def klpfleet(url: str, *args: str, code: int = 0) -> dict:
    proc = run_klpfleet("--db", url, *args, "-o", "json")
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)["data"]


def verdict(url: str, patch: str, host: str, code: int = 0) -> dict:
    data = klpfleet(url, "patch", "check", patch, "--hosts", host, "--all", code=code)
    return data["verdicts"][0]


def sysfs_map(lab: Lab, vm: str) -> dict[tuple[str, str], list[str]]:
    """(object, "function,sympos") -> patches top first, from the VM's sysfs alone: each patch's function
    directories, ordered by the kernel's stack_order where it exists, else by /proc/modules (newest first)."""
    listing = lab.sh(
        vm,
        r"""
for p in $(ls /sys/kernel/livepatch); do
    order=$(cat /sys/kernel/livepatch/$p/stack_order 2>/dev/null || echo -)
    for o in $(ls /sys/kernel/livepatch/$p); do
        [ -d /sys/kernel/livepatch/$p/$o ] || continue
        for f in $(ls /sys/kernel/livepatch/$p/$o | grep ,); do echo "$p $order $o $f"; done
    done
done
echo MODULES $(awk '{print $1}' /proc/modules)
""",
    ).splitlines()
    newest_first = listing[-1].split()[1:]
    rows = [line.split() for line in listing[:-1]]

    def rank(patch: str, order: str) -> int:
        return -int(order) if order != "-" else newest_first.index(patch)

    out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for patch, order, obj, func in rows:
        out.setdefault((obj, func), []).append((rank(patch, order), patch))
    return {key: [p for _r, p in sorted(v)] for key, v in out.items()}


def db_map(url: str, host: str) -> dict[tuple[str, str], list[str]]:
    rows = klpfleet(url, "functions", host)
    return {(r["object"], f"{r['function']},{r['sympos']}"): r["patches"] for r in rows}


def test_stacking_replace_and_states_are_predicted_and_the_map_equals_sysfs(clean_lab, lab_db):
    lab, url = clean_lab, lab_db
    for name in ("test_klp_stack", "test_klp_replace", "test_klp_state", "test_klp_state2", "test_klp_state3"):
        klpfleet(url, "patch", "add", str(lab.module(name)))
    show = klpfleet(url, "patch", "show", "test_klp_stack")[0]["contents"]
    assert (show["format"], show["objects"], show["replace"]) == (
        "klp_patch",
        {"vmlinux": [{"function": "cmdline_proc_show", "sympos": 0}]},
        False,
    )

    assert apply(lab, url, "test_klp_livepatch").returncode == 0
    stacking = verdict(url, "test_klp_stack", "lab1")
    assert stacking["verdict"] == "warn"
    assert [r["code"] for r in stacking["reasons"]] == ["stacks"]
    assert stacking["reasons"][0]["functions"] == ["vmlinux:cmdline_proc_show,1"]
    strict = klpfleet(url, "patch", "check", "test_klp_stack", "--hosts", "lab1", "--require-replace", code=1)
    assert strict["verdicts"][0]["verdict"] == "refuse"
    # The kernel takes it (a warning never leaves a host out): both patches list the function, the newer on top.
    assert apply(lab, url, "test_klp_stack").returncode == 0
    assert lab.sh("lab1", "cat /proc/cmdline") == "test_klp_stack: stacked on top\n"
    on_vm = sysfs_map(lab, "lab1")
    assert on_vm[("vmlinux", "cmdline_proc_show,1")] == ["test_klp_stack", "test_klp_livepatch"]
    assert db_map(url, "lab1") == on_vm
    # Where the order comes from: the kernel's stack_order from 6.13; before, a load reports only its own patch,
    # so the order is klpfleet's own loads until a gather reads the whole stack (/proc/modules).
    rows = klpfleet(url, "functions", "lab1")
    assert {r["stack_order_source"] for r in rows} == {"sysfs" if lab.version >= (6, 13) else "klpfleet_load_order"}
    gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=url)
    assert gathered.returncode == 0, gathered.stdout
    assert db_map(url, "lab1") == on_vm
    rows = klpfleet(url, "functions", "lab1")
    assert {r["stack_order_source"] for r in rows} == {"sysfs" if lab.version >= (6, 13) else "module_load_order"}

    # A replace patch: the pre-flight names what it replaces, and the kernel leaves it alone on top.
    replacing = verdict(url, "test_klp_replace", "lab1")
    assert replacing["verdict"] == "ok"
    assert replacing["reasons"][0]["replaces"] == ["test_klp_livepatch", "test_klp_stack"]
    assert apply(lab, url, "test_klp_replace").returncode == 0
    assert livepatches(lab, "lab1") == ["test_klp_replace"]
    assert db_map(url, "lab1") == sysfs_map(lab, "lab1") == {("vmlinux", "cmdline_proc_show,1"): ["test_klp_replace"]}

    # System states: version 2 installed; version 1 is predicted incompatible and the kernel refuses it (EINVAL),
    # version 2 again (test_klp_state3) is predicted to load and does.
    assert apply(lab, url, "test_klp_state2").returncode == 0
    older = verdict(url, "test_klp_state", "lab1", code=1)
    assert (older["verdict"], older["klp_error"]) == ("refuse", "incompatible_state")
    apply(lab, url, "test_klp_state")
    assert state(url, "lab1", "test_klp_state")[1] == "incompatible_state"
    assert livepatches(lab, "lab1") == ["test_klp_state2"]
    same = verdict(url, "test_klp_state3", "lab1")
    assert same["verdict"] == "ok" and same["klp_error"] is None
    assert apply(lab, url, "test_klp_state3").returncode == 0
    assert livepatches(lab, "lab1") == ["test_klp_state3"]


def test_an_unsigned_patch_on_a_kernel_enforcing_signatures_is_predicted_and_refused(clean_lab, lab_db, tmp_path):
    lab, url = clean_lab, lab_db
    unsigned = lab.module("test_klp_livepatch")
    signed_ko = tmp_path / "signed" / "test_klp_livepatch.ko"  # the lab's own key, which no lab kernel trusts
    signed_ko.parent.mkdir()
    signed_ko.write_bytes(signed(unsigned.read_bytes(), tmp_path))
    added = klpfleet(url, "patch", "add", str(signed_ko))
    signed_ref = f"test_klp_livepatch@{added['sha256'][:16]}"
    unsigned_ref = next(
        f"{p['name']}@{p['sha256'][:16]}"
        for p in klpfleet(url, "patch", "list")
        if p["name"] == "test_klp_livepatch" and p["sha256"] != added["sha256"]
    )
    assert klpfleet(url, "patch", "show", signed_ref)[0]["signature"]["signer"] == "klpfleet test signing key"

    # Enforcing signatures as `module.sig_enforce=1` at boot would: the parameter is enable-only at runtime (the
    # kernel's bool_enable_only), so switching it on costs no boot; switching it off needs the reboot below.
    lab.sh("lab3", "echo Y > /sys/module/module/parameters/sig_enforce")
    try:
        assert lab.sh("lab3", "cat /sys/module/module/parameters/sig_enforce").strip() == "Y"
        gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", db_url=url)
        assert gathered.returncode == 0, gathered.stdout
        predicted = verdict(url, unsigned_ref, "lab3", code=1)
        assert (predicted["verdict"], predicted["klp_error"]) == ("refuse", "signature_rejected")
        assert verdict(url, unsigned_ref, "lab1")["verdict"] == "ok"  # lab1 does not enforce
        trust = verdict(url, signed_ref, "lab3")
        assert [r["code"] for r in trust["reasons"]] == ["signature_trust_unchecked"]

        # What the kernel does: the unsigned module is rejected with the error predicted; so is the signed one,
        # whose key the kernel does not hold (the pre-flight said it cannot tell, and left the host in).
        apply(lab, url, unsigned, limit="lab3")
        assert state(url, "lab3", "test_klp_livepatch")[1] == "signature_rejected"
        # The kernel's words ("Loading of unsigned module is rejected" on 6.x; 5.10 names the module first).
        assert re.search(r"unsigned module is rejected", lab.sh("lab3", "dmesg | grep rejected | tail -1"))
        apply(lab, url, signed_ko, limit="lab3")
        assert re.search(r"module with unavailable key is rejected", lab.sh("lab3", "dmesg | grep rejected | tail -1"))
        assert (
            last_event(url, "lab3", "patch.state", "test_klp_livepatch").details["error_code"] == "signature_rejected"
        )
        assert livepatches(lab, "lab3") == []
    finally:
        lab.reboot("lab3")  # back to the lab's usual boot for the tests after this one
