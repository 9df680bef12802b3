"""Random operations on the simulated kernel, with the kernel's invariants checked after each one
(hypothesis stateful testing): one transition at a time, no directory for a fully unpatched patch,
module references, task patch states, hooked objects only when loaded, and callback symmetry."""

import contextlib
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimKernel, new_kernel
from klpfleet.sim.spec import normalize, write_ko

RELEASE = "6.1.0-56-amd64"
CB = "{mod}: %s_callback: {obj}"
ALL_CALLBACKS = {c: {"log": [CB % c]} for c in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")}


def callbacks(ret_param=True):
    out = {k: dict(v) for k, v in ALL_CALLBACKS.items()}
    if ret_param:
        out["pre_patch"]["ret"] = "param:ret"
    return out


PATCHES = {
    "lp_a": {
        "objects": [
            {"name": "vmlinux", "funcs": ["f1"], "callbacks": callbacks()},
            {"name": "tmod", "funcs": ["g1"], "callbacks": callbacks()},
        ]
    },
    "lp_b": {"replace": True, "objects": [{"name": "vmlinux", "funcs": ["f1", "f2"], "callbacks": callbacks()}]},
    "lp_c": {
        "states": [{"id": 1, "version": 1}],
        "objects": [
            {"name": "vmlinux", "funcs": ["f2"], "callbacks": callbacks()},
            {"name": "tmod", "funcs": ["g2"], "callbacks": callbacks()},
        ],
    },
    "lp_d": {
        "replace": True,
        "states": [{"id": 1, "version": 2}],
        "objects": [{"name": "tmod", "funcs": ["g1"], "callbacks": callbacks()}],
    },
}
MODULE_DIR = Path(tempfile.mkdtemp(prefix="klpfleet-props-"))
for _name, _spec in PATCHES.items():
    write_ko(
        normalize({"name": _name, "kernel_release": RELEASE, "params": {"ret": 0}, **_spec}), MODULE_DIR / f"{_name}.ko"
    )
write_ko(normalize({"name": "tmod", "kernel_release": RELEASE, "livepatch": False}), MODULE_DIR / "tmod.ko")

CALLBACK_RE = re.compile(r"^(lp_\w): (pre_patch|post_patch|pre_unpatch|post_unpatch)_callback: (\w+)")
ALLOWED = {
    ("idle", "pre_patch"): "prepatched",
    ("prepatched", "post_patch"): "patched",
    ("prepatched", "post_unpatch"): "idle",
    ("patched", "pre_unpatch"): "unpatching",
    ("unpatching", "post_unpatch"): "idle",
    ("unpatching", "post_patch"): "patched",
}


class KernelMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.k = SimKernel(new_kernel(RELEASE, speed=0.0, debug={"livepatch": True, "try_switch": False}))
        self.seen = 0
        self.callback_state = {}

    def run(self, *argv):
        return self.k.tool(list(argv), cwd=str(MODULE_DIR))

    @rule(name=st.sampled_from(sorted(PATCHES)), ret=st.sampled_from([0, 0, 0, -19, -16]))
    def load_patch(self, name, ret):
        self.run("insmod", f"{name}.ko", f"ret={ret}")

    @rule()
    def load_target(self):
        self.run("insmod", "tmod.ko")

    @rule(name=st.sampled_from([*sorted(PATCHES), "tmod"]))
    def rmmod(self, name):
        self.run("rmmod", name)

    @rule(name=st.sampled_from(sorted(PATCHES)), value=st.sampled_from(["0", "1", "y", "off", "bogus"]))
    def write_enabled(self, name, value):
        with contextlib.suppress(OSError):
            self.k.write(f"/sys/kernel/livepatch/{name}/enabled", value)

    @rule(name=st.sampled_from(sorted(PATCHES)))
    def force(self, name):
        with contextlib.suppress(OSError):
            self.k.write(f"/sys/kernel/livepatch/{name}/force", "1")

    @rule(func=st.sampled_from(["f1", "f2", "g1", "*"]), seconds=st.sampled_from([2, 20, None]), ignores=st.booleans())
    def stall_task(self, func, seconds, ignores):
        self.k.add_stall(func, seconds, ignores)

    @rule(seconds=st.sampled_from([0.1, 1, 3, 16, 40]))
    def sleep(self, seconds):
        self.k.advance(seconds)

    # ---------------------------------------------------------------- invariants

    @invariant()
    def one_transition_at_a_time(self):
        in_transition = [
            p
            for p in self.k.s["patches"]
            if self.k.read(f"/sys/kernel/livepatch/{p['name']}/transition").strip() == "1"
        ]
        assert len(in_transition) <= 1
        t = self.k.s["transition"]
        assert [p["name"] for p in in_transition] == ([t["patch"]] if t else [])

    @invariant()
    def no_directory_for_a_fully_unpatched_patch(self):
        listed = self.k.listdir("/sys/kernel/livepatch")
        t = self.k.s["transition"]
        for name in listed:
            patch = self.k.patch(name)
            assert patch["enabled"] or (t and t["patch"] == name)

    @invariant()
    def module_references(self):
        for name, module in self.k.s["modules"].items():
            assert 0 <= module["refcnt"] <= 1
            if self.k.patch(name) is not None:
                assert module["refcnt"] == 1

    @invariant()
    def task_states(self):
        states = {t["patch_state"] for t in self.k.s["tasks"]}
        assert states <= ({-1} if self.k.s["transition"] is None else {0, 1})

    @invariant()
    def hooked_objects_are_loaded(self):
        for patch in self.k.s["patches"]:
            for obj in patch["objects"]:
                if obj["patched"]:
                    assert self.k.object_loaded(obj), (patch["name"], obj["name"])

    @invariant()
    def callback_symmetry(self):
        new = self.k.s["log"][self.seen :]
        self.seen = len(self.k.s["log"])
        pending = None
        for _, _, text in new:
            m = re.match(r"livepatch: enabling patch '(\w+)'", text)
            if m:  # a new instance of the patch: its objects start idle
                for key in [k for k in self.callback_state if k[0] == m.group(1)]:
                    del self.callback_state[key]
            if pending and text.startswith("livepatch: pre-patch callback failed"):
                self.callback_state[pending] = "idle"  # refused: no other callback runs for it
            pending = None
            for marker in (
                "patching complete",
                "unpatching complete",
                "reversing transition",
                "forcing remaining",
                "signaling remaining",
                "callback failed",
                "refusing to load module",
                "not compatible",
            ):
                if marker in text:
                    event(marker)
            m = CALLBACK_RE.match(text)
            if m:
                key = (m.group(1), m.group(3))
                state = self.callback_state.get(key, "idle")
                nxt = ALLOWED.get((state, m.group(2)))
                assert nxt is not None, f"{m.group(2)} for {key} while {state}: {text}"
                self.callback_state[key] = nxt
                if m.group(2) == "pre_patch":
                    pending = key


KernelMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestKernelModel = KernelMachine.TestCase
