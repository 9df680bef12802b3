"""The collection as operators run it: check mode before a host has the patch, the modules' examples as written, the
simulator never shipped to a real host, one task that copies, checks and loads."""

import hashlib
import subprocess

import pytest

from klpfleet.registry.patches import add_patch
from klpfleet.sim.spec import normalize, write_ko

from .ansiblehelpers import BIN, ROOT, ansible_env, apply_ko, playbook
from .controllerhelpers import enabled_on
from .test_recording_ways import recorded, ways_fleet

pytestmark = pytest.mark.ansible


def test_apply_playbook_in_check_mode_on_hosts_that_never_had_the_patch(tmp_path, sqlite_url, monkeypatch):
    """--check --diff before anything was copied: a prediction for every host, no failure, nothing changed.
    The .ko travels with the task, so check mode judges the file itself, not a guess from the patch's name."""
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, kos = ways_fleet(tmp_path, sqlite_url)
    ko = kos["lp_a"]
    sha = hashlib.sha256(ko.read_bytes()).hexdigest()
    inventory = tmp_path / "fleet" / "inventory.yml"
    base = ("-e", f"klp_patch_src={ko}", "-e", f"klp_patch_sha256={sha}", "--limit", "sim-01:sim-02")
    assert (
        playbook(inventory, ROOT / "playbooks" / "apply.yml", *base, "--limit", "sim-01", db_url=sqlite_url).returncode
        == 0
    )
    checked = playbook(
        inventory,
        ROOT / "playbooks" / "apply.yml",
        *base,
        "-e",
        "klp_patch_name=lp_a",
        "--check",
        "--diff",
        db_url=sqlite_url,
    )
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "failed=0" in checked.stdout
    assert "not on the host yet" not in checked.stderr  # judged from the .ko's bytes, no warning needed
    assert enabled_on(tmp_path, "sim-02") == [] and not list(
        (tmp_path / "fleet" / "hosts" / "sim-02").glob("patches/*.ko")
    )
    recap = {line.split()[0]: line for line in checked.stdout.splitlines() if line.startswith("sim-0")}
    assert "changed=0" not in recap["sim-02"]  # would copy and load it
    assert "changed=0" in recap["sim-01"]  # already applied
    states_, _, _ = recorded(db)
    assert states_ == {("sim-01", "lp_a"): "applied"}  # check mode recorded nothing


def test_the_modules_examples_run_as_written(tmp_path, sqlite_url, monkeypatch):
    """Each module's EXAMPLES, unchanged, as a playbook over simulated hosts (one refusing the patch)."""
    import shutil

    import yaml

    from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module
    from ansible_collections.klpfleet.livepatch.plugins.modules import patch_info as patch_info_module

    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, _ = ways_fleet(tmp_path, sqlite_url)
    ko = write_ko(
        normalize({"name": "livepatch_cve_2026_1234", "objects": [{"name": "vmlinux", "funcs": ["f"]}]}),
        tmp_path / "x.ko",
    )
    with db.session.begin() as s:
        add_patch(s, ko)
    faults = tmp_path / "fleet" / "hosts"
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost

    with SimHost(str(faults / "sim-02")) as kernel:  # sim-02 refuses this patch too
        kernel.s.setdefault("faults", {}).setdefault("refuse", []).append(
            {"patch": "livepatch_cve_2026_1234", "object": "vmlinux", "errno": "ENODEV"}
        )
    # The example's src is relative: looked up in files/ beside the playbook, as copy's src is.
    (tmp_path / "files" / "patches").mkdir(parents=True)
    shutil.copy(ko, tmp_path / "files" / "patches" / "livepatch_cve_2026_1234.ko")
    tasks = yaml.safe_load(patch_module.EXAMPLES) + yaml.safe_load(patch_info_module.EXAMPLES)
    book = tmp_path / "examples.yml"
    book.write_text(yaml.safe_dump([{"hosts": "sim-01:sim-02", "gather_facts": False, "tasks": tasks}]))
    proc = playbook(
        tmp_path / "fleet" / "inventory.yml",
        book,
        "-e",
        f"patch_sha256={hashlib.sha256(ko.read_bytes()).hexdigest()}",
        db_url=sqlite_url,
        env={"ANSIBLE_BECOME_METHOD": "su"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "refused by vmlinux (ENODEV)" in proc.stdout
    states_, _, _ = recorded(db)
    assert states_[("sim-01", "livepatch_cve_2026_1234")] == "absent"  # applied, then removed
    assert states_[("sim-02", "livepatch_cve_2026_1234")] == "refused"


@pytest.mark.parametrize("module", ["klpfleet.livepatch.patch", "klpfleet.livepatch.patch_info"])
def test_the_simulator_never_travels_to_a_real_host(tmp_path, module):
    """What Ansible sends for a real (sysfs) host: the collection's module_utils, without the simulated kernel."""
    import base64
    import io
    import re
    import sys
    import zipfile

    env = ansible_env(
        ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_PIPELINING="False", ANSIBLE_REMOTE_TMP=str(tmp_path / "remote")
    )
    subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            module,
            "-a",
            "backend=sysfs name=none state=absent" if module.endswith(".patch") else "backend=sysfs",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    wrapper = next((tmp_path / "remote").rglob("AnsiballZ_*.py"))
    zipped = base64.b64decode(re.search(rb"zip_data='([A-Za-z0-9+/=]+)'", wrapper.read_bytes()).group(1))
    names = zipfile.ZipFile(io.BytesIO(zipped)).namelist()
    assert any(n.endswith("module_utils/_primitives.py") for n in names)
    assert not [n for n in names if "_sim_kernel" in n]


def test_apply_is_one_task_that_copies_checks_and_loads(tmp_path, sqlite_url, monkeypatch):
    """apply.yml is one module run per host: the .ko travels with the arguments, is checked before it is
    written, lands root-only under its sha256 and is loaded from there; remove.yml deletes that copy."""
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, kos = ways_fleet(tmp_path, sqlite_url)
    ko = kos["lp_a"]
    sha = hashlib.sha256(ko.read_bytes()).hexdigest()
    inventory = tmp_path / "fleet" / "inventory.yml"
    hosts = tmp_path / "fleet" / "hosts"

    def apply(*extra: str):
        return playbook(
            inventory, ROOT / "playbooks" / "apply.yml", "-e", f"klp_patch_src={ko}", *extra, db_url=sqlite_url
        )

    wrong = apply("-e", f"klp_patch_sha256={'0' * 64}", "--limit", "sim-01")
    assert wrong.returncode != 0 and "checksum_mismatch" in wrong.stdout
    assert enabled_on(tmp_path, "sim-01") == [] and not (hosts / "sim-01" / "patches").exists()  # nothing written

    first = apply("-e", f"klp_patch_sha256={sha}", "--limit", "sim-01:sim-03")
    assert first.returncode == 0, first.stdout[-3000:]
    assert first.stdout.count("TASK [") == 1  # one task, hence one module run per host
    for host in ("sim-01", "sim-03"):
        copy = hosts / host / "patches" / f"{sha}.ko"
        assert copy.read_bytes() == ko.read_bytes()
        assert (copy.stat().st_mode & 0o777) == 0o400 and (copy.parent.stat().st_mode & 0o777) == 0o700
        assert enabled_on(tmp_path, host) == ["lp_a"]
    again = apply("-e", f"klp_patch_sha256={sha}", "--limit", "sim-01:sim-03")
    assert again.returncode == 0 and "changed=0" in again.stdout and "changed=1" not in again.stdout

    removed = playbook(
        inventory,
        ROOT / "playbooks" / "remove.yml",
        "-e",
        "klp_patch_name=lp_a",
        "-e",
        f"klp_patch_sha256={sha}",
        "--limit",
        "sim-01",
        db_url=sqlite_url,
    )
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert enabled_on(tmp_path, "sim-01") == [] and not (hosts / "sim-01" / "patches" / f"{sha}.ko").exists()
    assert (hosts / "sim-03" / "patches" / f"{sha}.ko").exists()
    states_, _, _ = recorded(db)
    assert states_[("sim-01", "lp_a")] == "absent" and states_[("sim-03", "lp_a")] == "applied"

    missing = apply_ko(
        inventory,
        tmp_path / "nowhere.ko",
        sha,
        "--limit",
        "sim-02",
        db_url=sqlite_url,
    )
    assert missing.returncode != 0 and "source_unreadable" in missing.stdout
    by_hand = playbook(inventory, ROOT / "tests" / "playbooks" / "content.yml", "--limit", "sim-02", db_url=sqlite_url)
    assert by_hand.returncode != 0 and "set by the action plugin" in by_hand.stdout
