"""The collection's modules run in-process, over the simulated kernel: the result every caller sees,
for every outcome and klp_error, with check mode and diff."""

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import file_sha256
from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module
from ansible_collections.klpfleet.livepatch.plugins.modules import patch_info as patch_info_module
from klpfleet.sim.catalog import catalog_spec
from klpfleet.sim.spec import write_ko

from .simhelpers import build, kernel_state, sim_host


def run_module(module, capsys, **args):
    capsys.readouterr()
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    result = json.loads(capsys.readouterr().out)
    assert bool(result.get("failed")) == (exited.value.code != 0)
    return result


@pytest.fixture
def host_dir(tmp_path):
    sim_host(tmp_path / "host")
    return str(tmp_path / "host")


def test_present_quartet_and_absent_quartet_with_diff(capsys, host_dir, tmp_path):
    ko = build(tmp_path, "lp_fix")
    base = {"backend": "sim", "sim_root": host_dir, "src": ko, "_ansible_diff": True}
    check = run_module(patch_module, capsys, **base, _ansible_check_mode=True)
    assert (check["changed"], check["outcome"]) == (True, "applied")
    assert kernel_state(type("P", (), {"root": host_dir})())["modules"] == {}
    real = run_module(patch_module, capsys, **base)
    assert (real["changed"], real["outcome"]) == (True, "applied")
    assert real["diff"]["before"] == {"loaded": False, "enabled": None, "transition": None}
    assert real["diff"]["after"] == {"loaded": True, "enabled": True, "transition": False}
    again_check = run_module(patch_module, capsys, **base, _ansible_check_mode=True)
    again = run_module(patch_module, capsys, **base)
    assert (again_check["changed"], again["changed"], again["outcome"]) == (False, False, "already_applied")

    absent = {"backend": "sim", "sim_root": host_dir, "name": "lp_fix", "state": "absent"}
    results = [
        run_module(patch_module, capsys, **absent, _ansible_check_mode=True),
        run_module(patch_module, capsys, **absent),
        run_module(patch_module, capsys, **absent, _ansible_check_mode=True),
        run_module(patch_module, capsys, **absent),
    ]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert [r["outcome"] for r in results] == ["removed", "removed", "already_absent", "already_absent"]
    assert results[1]["host_clean"] is True


@pytest.mark.parametrize(
    ("faults", "spec", "args", "klp_error", "outcome", "extra"),
    [
        (
            {},
            "demo",
            {"params": {"pre_patch_ret": -19}},
            "refused",
            "refused",
            {"refused_object": "vmlinux", "errno": 19, "errno_name": "ENODEV", "host_clean": True},
        ),
        (
            {"stall": {"function": "*"}},
            None,
            {"transition_timeout": 2},
            "transition_stalled",
            "stalled",
            {"reversed": True, "host_clean": True},
        ),
        ({"sig_enforce": True}, None, {}, "signature_rejected", "failed", {"errno_name": "EKEYREJECTED"}),
        ({"lockdown": "integrity"}, None, {}, "lockdown", "failed", {"errno_name": "EPERM"}),
        ({"livepatch": False}, None, {}, "livepatch_unsupported", "failed", {}),
        ({}, None, {"sha256": "f" * 64}, "checksum_mismatch", "failed", {"host_clean": True}),
        ({}, "other-kernel", {}, "vermagic_mismatch", "failed", {"host_clean": True}),
        ({}, "plain", {}, "not_livepatch", "failed", {}),
        ({}, None, {"on_stall": "force"}, "invalid_argument", "failed", {}),
        ({}, None, {"name": "not_this_one"}, "invalid_argument", "failed", {}),
        ({}, "missing", {}, "source_unreadable", "failed", {"host_clean": True}),
        ({}, None, {"state": "absent", "name": "lp_fix", "on_stall": "force"}, "invalid_argument", "failed", {}),
    ],
)
def test_failures(capsys, tmp_path, faults, spec, args, klp_error, outcome, extra):
    root = tmp_path / "host"
    sim_host(root, **faults)
    if spec == "demo":
        ko = str(write_ko(catalog_spec("test_klp_callbacks_demo"), tmp_path / "demo.ko"))
    elif spec == "other-kernel":
        ko = build(tmp_path, "lp_fix", release="6.1.0-99-amd64")
    elif spec == "plain":
        ko = build(tmp_path, "virtio_net", livepatch=False, objects=[])
    elif spec == "missing":
        ko = str(tmp_path / "not-copied-yet.ko")
    else:
        ko = build(tmp_path, "lp_fix")
    result = run_module(patch_module, capsys, backend="sim", sim_root=str(root), src=ko, **args)
    assert result["failed"] is True
    assert (result["klp_error"], result["outcome"], result["klp_module"]) == (klp_error, outcome, "patch")
    for key, value in extra.items():
        assert result[key] == value, key
    assert result["msg"]


def test_forced_on_5_10_then_removal_leaves_a_pinned_module(capsys, tmp_path):
    release = "5.10.0-32-amd64"  # pins every patch present at a force (docs/kernel.md)
    root = tmp_path / "host"
    sim_host(root, release, stall={"function": "*", "seconds": 20})
    common = {"backend": "sim", "sim_root": str(root)}
    ko = build(tmp_path, "lp_a", release)
    forced = run_module(
        patch_module, capsys, **common, src=ko, on_stall="force", allow_force=True, transition_timeout=2
    )
    assert (forced["outcome"], forced["forced"], forced["changed"], forced["pinned"]) == (
        "applied",
        True,
        True,
        ["lp_a"],
    )
    assert forced["stalled_tasks"][0]["comm"] == "app_worker"
    gone = run_module(patch_module, capsys, **common, name="lp_a", state="absent", transition_timeout=30)
    assert (gone["outcome"], gone["changed"], gone["module_pinned"], gone["patch"]) == ("removed", True, True, None)
    again = run_module(patch_module, capsys, **common, src=ko)
    assert (again["klp_error"], again["failed"]) == ("forced_unremovable", True)


def test_patch_info(capsys, host_dir, tmp_path):
    run_module(patch_module, capsys, backend="sim", sim_root=host_dir, src=build(tmp_path, "lp_fix"))
    info = run_module(patch_info_module, capsys, backend="sim", sim_root=host_dir)
    assert info["changed"] is False
    assert info["kernel_release"] == "6.1.0-56-amd64"
    assert [p["name"] for p in info["patches"]] == ["lp_fix"]
    assert info["taint"]["names"] == ["oot_module", "unsigned_module", "livepatch"]
    assert info["transition"] is None and info["refused_module_loads"] == []


def test_sim_backend_needs_a_root(capsys, tmp_path):
    result = run_module(patch_info_module, capsys, backend="sim")
    assert result["failed"] and "sim_root" in result["msg"]


def test_checksum_in_any_case(capsys, host_dir, tmp_path):
    ko = build(tmp_path, "lp_fix")
    result = run_module(patch_module, capsys, backend="sim", sim_root=host_dir, src=ko, sha256=file_sha256(ko).upper())
    assert result["outcome"] == "applied"


def test_a_sha256_or_name_that_is_not_one_never_becomes_a_path(capsys, host_dir, tmp_path):
    """The sha256 names the copy to write or delete and the name a directory under /sys: anything else is
    refused before a file is touched."""
    import base64
    from pathlib import Path

    outside = tmp_path / "keep.ko"
    outside.write_bytes(b"not yours")
    sim = {"backend": "sim", "sim_root": host_dir}
    traversal = "../" * 8 + str(outside)[1:-3]
    removed = run_module(patch_module, capsys, **sim, name="lp_fix", state="absent", sha256=traversal)
    assert removed["klp_error"] == "invalid_argument" and outside.exists()
    ko = build(tmp_path, "lp_fix")
    content = base64.b64encode(Path(ko).read_bytes()).decode()
    sent = run_module(patch_module, capsys, **sim, src=ko, content=content, sha256=traversal)
    assert sent["klp_error"] == "invalid_argument" and not (tmp_path / "host" / "patches").exists()
    named = run_module(patch_module, capsys, **sim, name="../../etc", state="absent")
    assert named["klp_error"] == "invalid_argument"
    good = run_module(patch_module, capsys, **sim, src=ko, content=content, sha256=file_sha256(ko))
    assert good["outcome"] == "applied" and good["copied"] and good["path"].endswith(f"{file_sha256(ko)}.ko")
