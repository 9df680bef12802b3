"""An import-linter contract type the built-in ones lack: the modules of a package import nothing outside the
standard library but their own package (and, where named, a few allowed packages). The collection's code runs on
target hosts, where nothing else is installed."""

from __future__ import annotations

import sys

import grimp
from importlinter import Contract, ContractCheck, fields, output


class StandardLibraryOnly(Contract):
    type_name = "standard_library_only"

    source_modules = fields.ListField(subfield=fields.StringField())
    allowed = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        allowed = set(sys.stdlib_module_names) | {"__future__", *(self.allowed or [])}  # type: ignore[misc]
        offenders = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            own = source.split(".")[0]
            for module in sorted({source} | graph.find_descendants(source)):
                for imported in sorted(graph.find_modules_directly_imported_by(module)):
                    top = imported.split(".")[0]
                    if top == own and imported.startswith(source.rsplit(".", 1)[0]):
                        continue  # the collection's own code (its module_utils, its plugins)
                    if top not in allowed:
                        offenders.append((module, imported))
        return ContractCheck(kept=not offenders, metadata={"offenders": offenders})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, imported in check.metadata["offenders"]:
            output.print_error(f"{module} imports {imported}, which a target host does not have", bold=False)
            output.new_line()
