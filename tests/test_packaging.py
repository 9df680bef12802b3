"""Packaging: one version number everywhere, a wheel that builds without warnings and carries the licence,
the collection, the playbooks and the migrations."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import klpfleet

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT / "collections/ansible_collections/klpfleet/livepatch"


def test_one_version_for_the_package_the_collection_and_its_changelog():
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    changelog = yaml.safe_load((COLLECTION / "changelogs/changelog.yaml").read_text())
    newest = max(changelog["releases"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert galaxy["version"] == newest == klpfleet.__version__
    assert f"v{klpfleet.__version__}" in (COLLECTION / "CHANGELOG.rst").read_text()
    assert (COLLECTION / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel, built from a copy of the checkout as it is (caches included), and what pip said building it."""
    import shutil

    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo", ".lab"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(tmp_path.glob("klpfleet-*.whl")), proc


def test_the_wheel_builds_without_warnings_and_carries_what_it_needs(built):
    wheel, proc = built
    noise = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "warning" in line.lower() and "Location 'file:" not in line
    ]  # the machine's pip index config, not the build
    assert noise == []
    assert wheel.name.startswith(f"klpfleet-{klpfleet.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for needed in (
        "klpfleet/_collections/ansible_collections/klpfleet/livepatch/plugins/modules/patch.py",
        "klpfleet/_collections/ansible_collections/klpfleet/livepatch/meta/execution-environment.yml",
        "klpfleet/_collections/ansible_collections/klpfleet/livepatch/LICENSE",
        "klpfleet/_playbooks/apply.yml",
        "klpfleet/_migrations/versions/0003_events_rollout_id_at_index.py",
    ):
        assert needed in names, needed
    # Every module of the package: a subpackage left out of pyproject's list is missing from the wheel.
    for module in sorted((ROOT / "klpfleet").rglob("*.py")):
        if "__pycache__" not in module.parts:
            assert module.relative_to(ROOT).as_posix() in names, module


@pytest.mark.ansible
def test_an_installed_klpfleet_runs_its_shipped_playbooks_from_anywhere(built, tmp_path):
    """pip's klpfleet, used from a directory with no ansible.cfg: `klpfleet playbooks` says where the playbooks
    and the collection are, and with its --env line a hand-run ansible-playbook finds klpfleet.livepatch and
    records into the database."""
    import json
    import os
    import shlex

    from .ansiblehelpers import BIN

    site, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    wheel, _ = built
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(PYTHONPATH=str(site), KLPFLEET_DB=f"sqlite:///{tmp_path / 'k.db'}")

    def klpfleet_(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "klpfleet.cli.main", *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    where = json.loads(klpfleet_("playbooks", "-o", "json"))["data"]
    assert where["playbooks"] == str(site / "klpfleet" / "_playbooks") and "gather.yml" in where["files"]
    (work / "fleet.yml").write_text("hosts: 2\n")
    klpfleet_("db", "upgrade")
    klpfleet_("sim", "fleet", "create", str(work / "fleet"), "--spec", str(work / "fleet.yml"))
    klpfleet_("inventory", "import", "-i", str(work / "fleet" / "inventory.yml"))
    exports = klpfleet_("playbooks", "--env").strip()
    assert exports.startswith("export ")
    env.update(dict(pair.split("=", 1) for pair in shlex.split(exports)[1:]))
    run = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(work / "fleet" / "inventory.yml"),
            f"{where['playbooks']}/gather.yml",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    hosts = json.loads(klpfleet_("hosts", "-o", "json"))["data"]
    assert {h["name"]: h["kernel_release"] for h in hosts} == {"sim-01": "6.1.0-56-amd64", "sim-02": "6.1.0-56-amd64"}


def test_a_simulated_hosts_module_finds_every_sibling_the_simulated_kernel_imports():
    """Ansible never bundles the simulated kernel into a module's payload; the module loads it and the siblings
    named in SIM_KERNEL_IMPORTS from beside its file. A sibling missing from that list fails only off the
    checkout (an installed klpfleet), so the list is checked against the kernel's own imports."""
    import ast

    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import SIM_KERNEL_IMPORTS

    utils = ROOT / "collections" / "ansible_collections" / "klpfleet" / "livepatch" / "plugins" / "module_utils"
    tree = ast.parse((utils / "_sim_kernel.py").read_text())
    package = "ansible_collections.klpfleet.livepatch.plugins.module_utils."
    imported = {
        node.module.removeprefix(package)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package)
    }
    assert imported == set(SIM_KERNEL_IMPORTS)
