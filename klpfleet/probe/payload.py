"""The program the probe sends to each host: the collection's own standard-library module_utils plus a
few lines that print Livepatch.facts() as JSON. It travels on stdin to a constant remote command
(`python3 -`), and its parameters are JSON inside it, so no inventory or database value ever reaches a
command line. Probe and patch_info therefore read a host with the same code.
"""

from __future__ import annotations

import json
from functools import cache

from klpfleet.collection import MODULE_UTILS as PACKAGE
from klpfleet.collection import module_util, module_utils_dir

MODULES = ("_codes", "_kernel_log", "_modinfo", "_primitives", "_livepatch", "_artifact", "_persist")
# Simulated hosts only, in import order: the simulated kernel's siblings as the collection lists them (one list,
# kept equal to the kernel's imports by tests/test_packaging.py), then the kernel.
SIM_MODULES = (
    *(m for m in module_util("_primitives").SIM_KERNEL_IMPORTS if m not in MODULES),
    "_sim_kernel",
)
# -I: ignore the remote environment's PYTHON* variables and user site; -S: skip site (only the stdlib is
# used). Together they took 50 probed hosts from 6.4 s to 5.7 s (benchmarks/probe_bench.py's setup).
REMOTE_COMMAND = ["python3", "-I", "-S", "-"]

BOOTSTRAP = """\
import json, sys, types
PACKAGE = {package!r}
parts = PACKAGE.split(".")
for i in range(1, len(parts) + 1):
    name = ".".join(parts[:i])
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
for short, source in json.loads({sources!r}):
    module = types.ModuleType(PACKAGE + "." + short)
    module.__file__ = "<klpfleet probe: " + short + ">"
    sys.modules[module.__name__] = module
    setattr(sys.modules[PACKAGE], short, module)  # `from PACKAGE import _codes` finds it on any Python 3
    exec(compile(source, module.__file__, "exec"), module.__dict__)
ARGS = json.loads({args!r})
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for
try:
    prims = primitives_for(ARGS["backend"], ARGS.get("sim_root"), read_only=True)
    facts = Livepatch(prims).facts(with_tasks=ARGS["tasks"])
    from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist
    facts["boot"] = _persist.boot_facts(
        _persist.default_dir(ARGS["backend"], ARGS.get("sim_root")), facts["kernel_release"], facts["boot_id"]
    )
    print(json.dumps({{"ok": True, "facts": facts}}))
except Exception as exc:
    print(json.dumps({{"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}}))
"""


@cache
def _sources(simulated: bool) -> str:
    base = module_utils_dir()
    names = MODULES + SIM_MODULES if simulated else MODULES
    return json.dumps([(name, (base / f"{name}.py").read_text()) for name in names])


def payload(backend: str = "sysfs", sim_root: str | None = None, tasks: bool = True) -> str:
    args = json.dumps({"backend": backend, "sim_root": sim_root, "tasks": tasks})
    return BOOTSTRAP.format(package=PACKAGE, sources=_sources(backend == "sim"), args=args)
