# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""What can be known of a .ko before it is loaded: that it reads, matches its sha256, is a livepatch and was built
for this kernel; and whether a module already loaded under its name is the same build."""

from __future__ import annotations

import hashlib

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    Livepatch,
    LivepatchError,
    file_sha256,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import (
    BUILD_ID_SECTION,
    ModinfoError,
    build_id_from_note,
    first,
    read_module_bytes,
    read_module_file,
)


def check_source(prims, src, sha256=None, data=None):
    """Name and modinfo of the .ko at src (or of its bytes, `data`, before they were written there),
    refusing what can never load here."""
    try:
        modinfo, sections = read_module_file(src) if data is None else read_module_bytes(data)
    except (OSError, ModinfoError) as exc:
        raise LivepatchError("source_unreadable", "cannot read %s: %s" % (src, exc), src=src) from None
    name = first(modinfo, "name")
    if not name:
        raise LivepatchError("source_unreadable", "%s has no module name in .modinfo" % src, src=src)
    actual = (file_sha256(src) if data is None else hashlib.sha256(data).hexdigest()) if sha256 else None
    if sha256 and actual != sha256.lower():
        raise LivepatchError(
            "checksum_mismatch",
            "%s does not match the expected sha256" % src,
            src=src,
            expected_sha256=sha256.lower(),
            actual_sha256=actual,
        )
    if first(modinfo, "livepatch") != "Y":
        raise LivepatchError("not_livepatch", "%s (%s) is not a livepatch module" % (src, name), src=src)
    release = Livepatch(prims).kernel_release()
    vermagic = first(modinfo, "vermagic", "")
    if vermagic.split()[:1] != [release]:
        raise LivepatchError(
            "vermagic_mismatch",
            "%s was built for %s, this host runs %s" % (name, (vermagic.split() or ["?"])[0], release),
            src=src,
            vermagic=vermagic,
            kernel_release=release,
        )
    return name, modinfo, sections


def same_build(op, modinfo, sections):
    """Whether the loaded module is the build whose .modinfo and sections are given: its GNU build ID (every
    Kbuild module has one, shown in /sys/module/<name>/notes), else srcversion; None when the kernel shows
    neither."""
    build_id, srcversion = build_id_from_note(sections.get(BUILD_ID_SECTION)), first(modinfo, "srcversion")
    loaded_id, loaded_src = op.lp.module_build_id(op.name), op.lp.module_srcversion(op.name)
    op.result["identity"] = {"artifact_build_id": build_id, "loaded_build_id": loaded_id}
    if build_id and loaded_id:
        return build_id == loaded_id
    if srcversion and loaded_src:
        op.result["identity"].update(artifact_srcversion=srcversion, loaded_srcversion=loaded_src)
        return srcversion == loaded_src
    op.warn("the kernel shows no build ID or srcversion for %s: identified by name only" % op.name)
    return None


def different_build_error(op):
    return LivepatchError(
        "different_build",
        "another build of %s is loaded (build ID %s, this artifact %s): remove it first, or ship the new build "
        "under a new name or as a replace patch"
        % (op.name, op.result["identity"]["loaded_build_id"], op.result["identity"]["artifact_build_id"]),
        **op.result["identity"],
    )
