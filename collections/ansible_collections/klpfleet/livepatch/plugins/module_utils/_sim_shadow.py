# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The livepatch shadow variable API (kernel/livepatch/shadow.c) of the simulated kernel, and a module's
program of calls to it (a spec's `shadow`), logged the way the kernel selftests' test_klp_shadow_vars logs them.

The kernel keeps shadow variables in a hash keyed by <obj, id>: klp_shadow_get finds one or returns NULL;
klp_shadow_alloc refuses a duplicate (NULL, with a warning) or allocates the data and runs the constructor;
klp_shadow_get_or_alloc returns the existing one without running the constructor; klp_shadow_free and
klp_shadow_free_all run the destructor (when given) on what they remove. Addresses are symbolic; the module
prints them as PTR<n>, numbered in the order it first mentions them (its ptr_id()), which the program's order
of calls decides exactly as the C module's does.

A program is a list of calls, each a dict with one of: ptr NAME (ptr_id of a name: a field, an object, NULL);
get [OBJ, ID]; alloc / get_or_alloc [OBJ, ID, FIELD] (the constructor stores FIELD in the new variable);
free [OBJ, ID] with dtor true|false; free_all ID with dtor true|false. get and get_or_alloc may carry
`save` (a name for the result) and `expect`: "null", or [SAVED, FIELD] (the result is the saved variable and
it holds FIELD): a met expectation logs "got expected ... result", as the module does.
"""

from __future__ import annotations

NULL = "NULL"
CTOR = "shadow_ctor"
DTOR = "shadow_dtor"
SIZE = 8  # the module's shadow data is one pointer
OPS = ("ptr", "get", "alloc", "get_or_alloc", "free", "free_all")


class ShadowProgram(object):
    def __init__(self, kernel, module):
        self.k = kernel
        self.mod = module
        self.ids = {}  # the module's ptr_id(): name -> n, in order of first mention
        self.saved = {}  # names the program gave to results -> symbolic address
        self.store = kernel.s.setdefault("shadow", [])  # [{obj, id, data, holds}], the kernel's hash

    def ptr(self, name):
        if name not in self.ids:
            self.ids[name] = len(self.ids)
        return self.ids[name]

    def log(self, text):
        self.k.log("%s: %s" % (self.mod, text))

    def find(self, obj, sv_id):
        for var in self.store:
            if var["obj"] == obj and var["id"] == sv_id:
                return var
        return None

    def new_var(self, obj, sv_id, field):
        self.k.s["shadow_next"] = self.k.s.get("shadow_next", 0) + 1
        var = {"obj": obj, "id": sv_id, "data": "shadow#%d" % self.k.s["shadow_next"], "holds": None}
        self.store.append(var)
        var["holds"] = field  # shadow_ctor: *sv = *ctor_data
        self.log("%s: PTR%d -> PTR%d" % (CTOR, self.ptr(var["data"]), self.ptr(field)))
        return var

    def run(self, program):
        for call in program:
            self.step(call)

    def step(self, call):
        if "ptr" in call:
            self.ptr(call["ptr"])
            return
        if "get" in call:
            obj, sv_id = call["get"]
            var = self.find(obj, sv_id)
            result = var["data"] if var else NULL
            self.log("klp_shadow_get(obj=PTR%d, id=0x%x) = PTR%d" % (self.ptr(obj), sv_id, self.ptr(result)))
            self.expectation(call, var)
            return
        for op in ("alloc", "get_or_alloc"):
            if op in call:
                obj, sv_id, field = call[op]
                var = self.find(obj, sv_id)
                if var is None:
                    var = self.new_var(obj, sv_id, field)
                elif op == "alloc":
                    var = None  # the kernel warns of a duplicate and returns NULL
                result = var["data"] if var else NULL
                args = (op, self.ptr(obj), sv_id, SIZE, self.ptr(CTOR), self.ptr(field), self.ptr(result))
                self.log(
                    "klp_shadow_%s(obj=PTR%d, id=0x%x, size=%x, gfp_flags=GFP_KERNEL), ctor=PTR%d, "
                    "ctor_data=PTR%d = PTR%d" % args
                )
                if call.get("save") and var:
                    self.saved[call["save"]] = var["data"]
                self.expectation(call, var)
                return
        if "free" in call:
            obj, sv_id = call["free"]
            var = self.find(obj, sv_id)
            if var is not None:
                self.remove(var, call.get("dtor"))
            dtor = DTOR if call.get("dtor") else NULL
            self.log("klp_shadow_free(obj=PTR%d, id=0x%x, dtor=PTR%d)" % (self.ptr(obj), sv_id, self.ptr(dtor)))
            return
        if "free_all" in call:
            sv_id = call["free_all"]
            for var in [v for v in self.store if v["id"] == sv_id]:
                self.remove(var, call.get("dtor"))
            dtor = DTOR if call.get("dtor") else NULL
            self.log("klp_shadow_free_all(id=0x%x, dtor=PTR%d)" % (sv_id, self.ptr(dtor)))

    def remove(self, var, dtor):
        if dtor:
            self.log("%s(obj=PTR%d, shadow_data=PTR%d)" % (DTOR, self.ptr(var["obj"]), self.ptr(var["data"])))
        self.store.remove(var)

    def expectation(self, call, var):
        expect = call.get("expect")
        if expect == "null" and var is None:
            self.log("  got expected NULL result")
        elif isinstance(expect, list) and var is not None:
            saved, field = expect
            if self.saved.get(saved) == var["data"] and var["holds"] == field:
                self.log("  got expected PTR%d -> PTR%d result" % (self.ptr(var["data"]), self.ptr(field)))


def run_shadow_program(kernel, module_name, program):
    ShadowProgram(kernel, module_name).run(program)
