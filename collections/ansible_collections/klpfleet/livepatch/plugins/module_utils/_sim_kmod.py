# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""kmod's tools (insmod, rmmod, modprobe) as the simulated kernel runs them: argv in, exit status and kmod's
exact stderr out. A mixin of SimKernel, which provides load_module and unload_module."""

from __future__ import annotations

import errno
import os

# kmod's wording: strerror, except where insmod words it otherwise (docs/kernel.md).
INSMOD_MESSAGES = {
    errno.EINVAL: "Invalid parameters",
    errno.ENOEXEC: "Invalid module format",
    errno.ENOENT: "Unknown symbol in module",
    errno.ESRCH: "Module has wrong symbol version",
}


class KmodTools(object):
    def tool(self, argv, cwd=None):
        tool = os.path.basename(argv[0])
        args = list(argv[1:])
        if tool == "insmod":
            return self.insmod(args, cwd)
        if tool == "rmmod":
            return self.rmmod(args)
        if tool == "modprobe":
            return self.modprobe(args, cwd)
        return 127, "", "%s: command not found\n" % tool

    def insmod(self, args, cwd=None):
        if not args:
            return 1, "", "Usage:\n\tinsmod [options] filename [args]\n"
        path = args[0]
        full = os.path.join(cwd or os.getcwd(), path)
        if not os.path.isfile(full):
            return 1, "", "insmod: ERROR: could not load module %s: No such file or directory\n" % path
        ret = self.load_module(full, args[1:])
        if ret:
            err = -ret
            message = INSMOD_MESSAGES.get(err, os.strerror(err))
            return 1, "", "insmod: ERROR: could not insert module %s: %s\n" % (path, message)
        return 0, "", ""

    def rmmod(self, args):
        names = [a for a in args if not a.startswith("-")]
        if not names:
            return 1, "", "rmmod: ERROR: missing module name.\n"
        rc, err = 0, ""
        for raw in names:
            name = os.path.basename(raw)
            if name.endswith(".ko"):
                name = name[:-3]
            name = name.replace("-", "_")
            ret = self.unload_module(name)
            if ret == -errno.ENOENT:
                rc, err = 1, err + "rmmod: ERROR: Module %s is not currently loaded\n" % name
            elif ret:
                rc, err = 1, err + "rmmod: ERROR: Module %s is in use\n" % name
        return rc, "", err

    def modprobe(self, args, cwd=None):
        remove = "-r" in args
        names = [a for a in args if not a.startswith("-")]
        if not names:
            return 1, "", "modprobe: ERROR: missing parameters. See -h.\n"
        name = names[0].replace("-", "_")
        if remove:
            ret = self.unload_module(name)
            if ret == -errno.ENOENT:
                return 0, "", ""
            if ret:
                return 1, "", "modprobe: FATAL: Module %s is in use.\n" % name
            return 0, "", ""
        if name in self.s["modules"]:
            return 0, "", ""
        module_dir = self.s.get("module_dir")
        path = os.path.join(module_dir, name + ".ko") if module_dir else None
        if not path or not os.path.isfile(path):
            return (
                1,
                "",
                "modprobe: FATAL: Module %s not found in directory /lib/modules/%s\n"
                % (name, self.s["kernel_release"]),
            )
        if "-n" in args or "--dry-run" in args:  # everything but the insertion (the selftests' assert_mod)
            return 0, "", ""
        ret = self.load_module(path, names[1:])
        if ret:
            return 1, "", "modprobe: ERROR: could not insert '%s': %s\n" % (name, os.strerror(-ret))
        return 0, "", ""
