"""Packaging: one version number everywhere, a wheel that builds without warnings and carries the licence,
the collection, the playbooks and the migrations."""

import subprocess
import sys
import zipfile
from pathlib import Path

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


def test_the_wheel_builds_without_warnings_and_carries_what_it_needs(tmp_path):
    import shutil

    # A copy of the checkout as it is (caches included), without an earlier build's leftovers.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo", ".lab"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "warning" in line.lower() and "Location 'file:" not in line
    ]  # the machine's pip index config, not the build
    assert noise == []
    wheel = next(tmp_path.glob("klpfleet-*.whl"))
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
