"""The simulated kernel's shadow variable API (a spec's `shadow` program) against kernel/livepatch/shadow.c's
rules, and upstream's test_klp_shadow_vars log, which the catalog's module of that name must print word for word
(upstream's test-shadow-vars.sh also runs it unchanged: tests/test_lab_upstream.py)."""

from __future__ import annotations

import pytest

from klpfleet.collection import module_util
from klpfleet.errors import UsageError
from klpfleet.sim.catalog import catalog_spec
from klpfleet.sim.scenario import selftest_filter
from klpfleet.sim.spec import normalize, write_ko

sim = module_util("_sim_kernel")


def run_program(tmp_path, program, name="shadowy"):
    sim.create_host(str(tmp_path / "h"), speed=0.0)
    ko = write_ko(normalize({"name": name, "livepatch": False, "shadow": program}), tmp_path / f"{name}.ko")
    prims = sim.SimPrimitives(str(tmp_path / "h"))
    assert prims.run(["insmod", str(ko)])[0] == 0
    records, _ = prims.read_log(-1)
    with sim.SimHost(str(tmp_path / "h")) as kernel:
        left = list(kernel.s["shadow"])
    lines = [text.removeprefix(f"{name}: ") for _, _, text in records if text.startswith(f"{name}: ")]
    return [line for line in lines if "taint" not in line], left


def test_alloc_refuses_a_duplicate_and_get_or_alloc_does_not_construct_twice(tmp_path):
    lines, left = run_program(
        tmp_path,
        [
            {"ptr": "NULL"},
            {"alloc": ["o", 1, "f"], "save": "a"},
            {"alloc": ["o", 1, "g"]},  # a duplicate: NULL, no constructor
            {"get_or_alloc": ["o", 1, "g"], "expect": ["a", "f"]},  # the first one, still holding f
        ],
    )
    assert lines == [
        "shadow_ctor: PTR1 -> PTR2",
        "klp_shadow_alloc(obj=PTR3, id=0x1, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR2 = PTR1",
        "klp_shadow_alloc(obj=PTR3, id=0x1, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR5 = PTR0",
        "klp_shadow_get_or_alloc(obj=PTR3, id=0x1, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR5 = PTR1",
        "  got expected PTR1 -> PTR2 result",
    ]
    assert [(v["obj"], v["id"], v["holds"]) for v in left] == [("o", 1, "f")]


def test_free_all_runs_the_destructor_on_each_variable_of_the_id_only(tmp_path):
    lines, left = run_program(
        tmp_path,
        [
            {"ptr": "NULL"},
            {"alloc": ["o1", 7, "f"]},
            {"alloc": ["o2", 7, "f"]},
            {"alloc": ["o1", 8, "f"]},
            {"free_all": 7, "dtor": True},
            {"get": ["o1", 7], "expect": "null"},
        ],
    )
    assert sum(line.startswith("shadow_dtor(") for line in lines) == 2
    assert "  got expected NULL result" in lines
    assert [(v["obj"], v["id"]) for v in left] == [("o1", 8)]


def test_the_catalog_module_prints_what_upstreams_test_expects(tmp_path):
    sim.create_host(str(tmp_path / "h"), speed=0.0)
    write_ko(catalog_spec("test_klp_shadow_vars"), tmp_path / "test_modules" / "test_klp_shadow_vars.ko")
    prims = sim.SimPrimitives(str(tmp_path / "h"), cwd=str(tmp_path))
    assert prims.run(["insmod", "test_modules/test_klp_shadow_vars.ko"])[0] == 0
    assert prims.run(["rmmod", "test_klp_shadow_vars"])[0] == 0
    lines = selftest_filter([text for _, _, text in prims.read_log(-1)[0]])
    prefix = "test_klp_shadow_vars: "
    assert len(lines) == 57 and all(line.startswith(prefix) for line in lines)
    assert lines[:3] == [
        prefix + "klp_shadow_get(obj=PTR1, id=0x1234) = PTR0",
        prefix + "  got expected NULL result",
        prefix + "shadow_ctor: PTR3 -> PTR2",
    ]
    assert lines[-2:] == [prefix + "klp_shadow_get(obj=PTR14, id=0x1235) = PTR0", prefix + "  got expected NULL result"]
    assert sum("got expected" in line for line in lines) == 19


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ([{"get": ["o", 1], "alloc": ["o", 1, "f"]}], "shadow[0]"),
        ([{"alloc": ["o", 1]}], "alloc takes [obj, id, field]"),
        ([{"get": ["../x", 1]}], "is not a pointer name"),
        ([{"free_all": -1}], "is not a shadow variable id"),
        ([{"get": ["o", 1], "expect": "something"}], "expect is null or [saved, field]"),
        ({"get": ["o", 1]}, "a list of at most 1000 calls"),
    ],
)
def test_a_bad_shadow_program_is_refused_in_one_line(program, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        normalize({"name": "shadowy", "livepatch": False, "shadow": program})
