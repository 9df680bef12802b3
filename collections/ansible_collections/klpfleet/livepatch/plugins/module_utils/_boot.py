# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The boot loader: load the patches kept for the running kernel release, in stack order.

It is the patch module's own apply_patch, one patch after the other, so a boot load verifies the sha256, waits
for the transition, reverses a stall and classifies a refusal exactly as a rollout does. Each result goes to the
kernel log as a `klpfleet-boot:` line (and to stdout, which is the journal under systemd) and all of them to
boot-status.json with the boot id, where patch_info and the probe find them.

On a systemd host it runs as klpfleet-boot.service (`python3 PERSIST_DIR/klpfleet-boot.pyz load`); anywhere
else an init script runs the same command; a simulated host runs load_all() on `klpfleet sim host reboot`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _artifact as artifact
from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch, LivepatchError
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch

LOG_PREFIX = "klpfleet-boot: "
# What the loader runs on a host, from this directory: it travels as a zip application (klpfleet-boot.pyz).
BUNDLED = (
    "_artifact",
    "_artifact_checks",
    "_boot",
    "_codes",
    "_kernel_log",
    "_livepatch",
    "_modinfo",
    "_operations",
    "_persist",
    "_primitives",
    "_stall",
)
PACKAGE = "ansible_collections/klpfleet/livepatch/plugins/module_utils"
MAIN = "import sys\nfrom %s._boot import main\nsys.exit(main())\n" % PACKAGE.replace("/", ".")
_bundle = []


def load_all(prims, persist_dir, transition_timeout=60.0, echo=None):
    """Load every kept patch for the running release; returns the status also written to boot-status.json.
    A failed patch does not stop the ones after it (each is a fix of its own), and each failure is reported."""
    lp = Livepatch(prims)
    release = lp.kernel_release()
    status = {
        "boot_id": lp.boot_id(),
        "kernel_release": release,
        "started": time.time(),
        "results": [],
    }

    def say(text):
        prims.log_write("<5>%s%s\n" % (LOG_PREFIX, text))  # notice, as kpatch's lines
        if echo:
            echo(text)

    try:
        entries = persist.manifest(persist_dir, release)
    except LivepatchError as exc:
        say("cannot read the manifest: %s" % exc.msg)
        status.update(error=exc.msg, klp_error=exc.klp_error)
        entries = []
    if not entries and "error" not in status:
        say("nothing kept for %s" % release)
    for entry in entries:
        path = os.path.join(persist.release_dir(persist_dir, release), entry["sha256"] + ".ko")
        started = prims.now()
        one = {"name": entry["name"], "sha256": entry["sha256"]}
        try:
            artifact.check_file(path)  # kept by us alone: nobody swaps it between the sha256 check and insmod
            result = apply_patch(
                prims,
                path,
                name=entry["name"],
                params=entry.get("params") or {},
                sha256=entry["sha256"],
                transition_timeout=transition_timeout,
                on_stall="reverse",
            )
            one.update(outcome=result["outcome"], replaced=result.get("replaced") or [])
            say("%s: %s" % (entry["name"], result["outcome"]))
        except LivepatchError as exc:
            one.update(
                outcome="refused" if exc.klp_error == "refused" else "failed",
                klp_error=exc.klp_error,
                msg=exc.msg,
                host_clean=exc.details.get("host_clean"),
            )
            for key in ("errno", "refused_object"):
                if exc.details.get(key) is not None:
                    one[key] = exc.details[key]
            say("%s: failed klp_error=%s: %s" % (entry["name"], exc.klp_error, exc.msg))
        one["seconds"] = round(prims.now() - started, 3)
        status["results"].append(one)
    status["finished"] = time.time()
    try:
        persist.save_boot_status(persist_dir, release, status)
    except (OSError, LivepatchError) as exc:
        say("cannot write the boot status: %s" % (getattr(exc, "msg", None) or exc))
    return status


def bundle():
    """The loader as a zip application: these module_utils under their package path and a __main__. The same
    bytes for the same collection (fixed timestamps), so a host rewrites its copy only when the code changed."""
    if not _bundle:
        here = os.path.dirname(os.path.abspath(__file__))
        parts = PACKAGE.split("/")
        files = [("__main__.py", MAIN.encode())]
        files += [("/".join(parts[: i + 1]) + "/__init__.py", b"") for i in range(len(parts))]
        for name in BUNDLED:
            with open(os.path.join(here, name + ".py"), "rb") as f:
                files.append(("%s/%s.py" % (PACKAGE, name), f.read()))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
        _bundle.append(buffer.getvalue())
    return _bundle[0]


def main(argv=None):
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import RealPrimitives

    parser = argparse.ArgumentParser(prog="klpfleet-boot", description="Load the livepatches kept for this kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="load every kept patch for the running kernel, in stack order")
    load.add_argument("--persist-dir", default=persist.DEFAULT_DIR)
    load.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each transition")
    show = sub.add_parser("list", help="print the manifest for the running kernel")
    show.add_argument("--persist-dir", default=persist.DEFAULT_DIR)
    args = parser.parse_args(argv)
    prims = RealPrimitives()
    if args.command == "list":
        release = Livepatch(prims).kernel_release()
        try:
            for entry in persist.manifest(args.persist_dir, release):
                sys.stdout.write("%s %s\n" % (entry["name"], entry["sha256"]))
        except LivepatchError as exc:
            sys.stderr.write("klpfleet-boot: %s\n" % exc.msg)
            return 1
        return 0
    if not Livepatch(prims).supported():
        sys.stderr.write("klpfleet-boot: this kernel has no livepatch support; nothing loaded\n")
        return 1
    status = load_all(prims, args.persist_dir, args.timeout, echo=lambda text: sys.stdout.write(text + "\n"))
    failed = [r for r in status["results"] if r["outcome"] not in ("applied", "already_applied")]
    return 1 if failed or status.get("error") else 0
