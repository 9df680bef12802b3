# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""Patches kept for boot: per kernel release, the verified .ko files and a manifest in stack order.

    PERSIST_DIR/klpfleet-boot.pyz          the boot loader (sent by the patch action plugin)
    PERSIST_DIR/RELEASE/manifest.json      {"format": 1, "kernel_release": R, "patches": [entry, ...]}
    PERSIST_DIR/RELEASE/SHA256.ko          each entry's module, 0400
    PERSIST_DIR/RELEASE/boot-status.json   what the loader did at the last boot (boot id, one result per entry)

An entry is {name, sha256, params, replace, added}. The order of entries is the order the patches were enabled
in, which is the order the loader enables them in. Only the running release's directory is ever written: a
host booted into another release finds nothing to load there, which is right, the modules could not load.
Every write is a temporary file renamed into place, under an flock, so a crash or a concurrent run never leaves
a half-written manifest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _artifact as artifact
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError, check_name

DEFAULT_DIR = "/var/lib/klpfleet/boot"
MANIFEST = "manifest.json"
BOOT_STATUS = "boot-status.json"
LOADER = "klpfleet-boot.pyz"
UNIT_NAME = "klpfleet-boot.service"
SYSTEMD_RUNTIME = "/run/systemd/system"  # present only when systemd is PID 1
UNIT_DIR = "/etc/systemd/system"
FORMAT = 1


def default_dir(backend, sim_root):
    """A fixed root-only directory; inside the host's own directory on simulated hosts."""
    return os.path.join(sim_root, "boot") if backend == "sim" and sim_root else DEFAULT_DIR


def release_dir(persist_dir, release):
    if not release or "/" in release or release.startswith(".") or "\x00" in release:
        raise LivepatchError("invalid_argument", "%r is not a kernel release" % (release,))
    return os.path.join(persist_dir, release)


def ensure_dir(directory):
    """Create the directory 0700 if it is missing; refuse one others could write to (see _artifact)."""
    if artifact.usable_directory(directory):
        return
    try:
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise LivepatchError("install_failed", "cannot create %s: %s" % (directory, exc.strerror)) from None


@contextlib.contextmanager
def locked(persist_dir):
    ensure_dir(persist_dir)
    fd = os.open(os.path.join(persist_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_json(path):
    """The document at path, None when there is none; a LivepatchError when it is not a klpfleet document."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise LivepatchError("install_failed", "cannot read %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise LivepatchError("install_failed", "%s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LivepatchError("install_failed", "%s is not a klpfleet format %d document" % (path, FORMAT))
    return doc


def manifest(persist_dir, release, trusted=True):
    """The entries kept for boot on this release, in stack order (empty when none). Unless `trusted` is False
    (a read-only report), the directories and the manifest must be ours alone, checked on every read: the boot
    loader loads what it names as root, so a directory made writable by others since it was kept is refused."""
    path = os.path.join(release_dir(persist_dir, release), MANIFEST)
    if trusted:
        for directory in (persist_dir, release_dir(persist_dir, release)):
            artifact.usable_directory(directory)
        artifact.check_file(path)
    doc = read_json(path)
    entries = doc.get("patches") if doc else []
    if not isinstance(entries, list):
        raise LivepatchError("install_failed", "the manifest for %s has no patch list" % release)
    for entry in entries:
        if not isinstance(entry, dict):
            raise LivepatchError("install_failed", "the manifest for %s holds a malformed entry" % release)
        check_name(entry.get("name"))
        artifact.sha256_hex(entry.get("sha256"))
    return entries


def _save(persist_dir, release, entries):
    directory = release_dir(persist_dir, release)
    doc = {"format": FORMAT, "kernel_release": release, "patches": entries}
    artifact.write_atomically(
        os.path.join(directory, MANIFEST), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o600
    )
    wanted = {e["sha256"] + ".ko" for e in entries}
    for name in os.listdir(directory):
        if name.endswith(".ko") and name not in wanted:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def keep(persist_dir, release, name, sha256, data, params=None, replace=False, replaced=(), check_mode=False):
    """Keep the applied patch for boot: its .ko beside the manifest and its entry after those enabled before it.
    A replace patch frees every patch below it (the kernel's atomic replace), so it becomes the only entry;
    `replaced` names any others its load freed. Returns whether the manifest changed."""
    check_name(name)
    sha256 = artifact.sha256_hex(sha256)
    if check_mode:
        entries = manifest(persist_dir, release) if os.path.isdir(persist_dir) else []
        return not any(e["name"] == name and e["sha256"] == sha256 for e in entries) or bool(replace)
    try:
        with locked(persist_dir):
            directory = release_dir(persist_dir, release)
            ensure_dir(directory)
            artifact.install(data, directory, sha256)
            entries = manifest(persist_dir, release)
            before = [(e["name"], e["sha256"]) for e in entries]
            entry = {"name": name, "sha256": sha256, "params": dict(params or {}), "replace": bool(replace)}
            if replace:
                entries = [e for e in entries if e["name"] == name]
            entries = [e for e in entries if e["name"] not in set(replaced or ())]
            for index, old in enumerate(entries):
                if old["name"] == name:  # the same patch applied again (or rebuilt): it keeps its place
                    entries[index] = dict(entry, added=old.get("added") or time.time())
                    break
            else:
                entries.append(dict(entry, added=time.time()))
            if [(e["name"], e["sha256"]) for e in entries] == before and os.path.exists(
                os.path.join(directory, MANIFEST)
            ):
                return False
            _save(persist_dir, release, entries)
            return True
    except OSError as exc:
        raise LivepatchError("install_failed", "cannot keep %s for boot: %s" % (name, exc.strerror or exc)) from None


def forget(persist_dir, release, name, check_mode=False):
    """Take the patch out of the manifest (and its .ko with it). Returns whether it was there."""
    check_name(name)
    if not os.path.isdir(release_dir(persist_dir, release)):
        return False
    if check_mode:
        return any(e["name"] == name for e in manifest(persist_dir, release))
    try:
        with locked(persist_dir):
            entries = manifest(persist_dir, release)
            kept = [e for e in entries if e["name"] != name]
            if len(kept) == len(entries):
                return False
            _save(persist_dir, release, kept)
            return True
    except OSError as exc:
        raise LivepatchError("install_failed", "cannot drop %s from boot: %s" % (name, exc.strerror or exc)) from None


def drop(persist_dir, sha256s, check_mode=False):
    """Take these builds out of every release's manifest, their .ko files with them: a patch blocked on the
    controller is not loaded at any later boot, whichever kernel release the host boots next (the one place
    that writes another release's directory: dropping only ever removes). The entries dropped, as
    [{name, sha256, kernel_release}]."""
    wanted = {artifact.sha256_hex(value) for value in sha256s}
    if not wanted or not os.path.isdir(persist_dir):
        return []
    with contextlib.ExitStack() as stack:
        if not check_mode:
            stack.enter_context(locked(persist_dir))
        dropped = []
        for release in sorted(os.listdir(persist_dir)):
            if release.startswith(".") or not os.path.isfile(os.path.join(persist_dir, release, MANIFEST)):
                continue  # the lock, the loader, a release never kept for
            entries = manifest(persist_dir, release)
            gone = [e for e in entries if e["sha256"] in wanted]
            if not gone:
                continue
            dropped += [{"name": e["name"], "sha256": e["sha256"], "kernel_release": release} for e in gone]
            if not check_mode:
                _save(persist_dir, release, [e for e in entries if e["sha256"] not in wanted])
        return dropped


def boot_status(persist_dir, release):
    """What the loader did at the last boot into this release, or None."""
    try:
        return read_json(os.path.join(release_dir(persist_dir, release), BOOT_STATUS))
    except LivepatchError:
        return None


def save_boot_status(persist_dir, release, status):
    directory = release_dir(persist_dir, release)
    ensure_dir(directory)
    doc = dict(status, format=FORMAT)
    artifact.write_atomically(
        os.path.join(directory, BOOT_STATUS), (json.dumps(doc, sort_keys=True) + "\n").encode(), 0o644
    )


def unit_text(python, persist_dir):
    """A oneshot unit ordered like kpatch.service: after local filesystems, before the network comes up, so
    network services start on the patched kernel; `klpfleet.boot=0` on the kernel command line skips it."""
    return (
        "[Unit]\n"
        "Description=Load the livepatches klpfleet keeps for the running kernel\n"
        "ConditionKernelCommandLine=!klpfleet.boot=0\n"
        "After=local-fs.target systemd-modules-load.service\n"
        "Before=network-pre.target\n"
        "Wants=network-pre.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "ExecStart=%s %s load --persist-dir %s\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n" % (python, os.path.join(persist_dir, LOADER), persist_dir)
    )


def install_loader(persist_dir, bundle, python, systemd=None, unit_dir=UNIT_DIR, check_mode=False):
    """Write the loader (when it differs) and, on a systemd host, its unit enabled for boot. `bundle` is the
    loader's zip archive. Returns whether anything was written."""
    if systemd is None:
        systemd = os.path.isdir(SYSTEMD_RUNTIME)
    path = os.path.join(persist_dir, LOADER)
    wanted = [(path, bundle, 0o500)]
    if systemd:
        wanted.append((os.path.join(unit_dir, UNIT_NAME), unit_text(python, persist_dir).encode(), 0o644))
    changed = False
    with locked(persist_dir) if not check_mode else contextlib.nullcontext():
        for target, data, mode in wanted:
            try:
                with open(target, "rb") as f:
                    if f.read() == data:
                        continue
            except OSError:
                pass
            changed = True
            if not check_mode:
                try:
                    artifact.write_atomically(target, data, mode)
                except OSError as exc:
                    raise LivepatchError("install_failed", "cannot write %s: %s" % (target, exc.strerror)) from None
        if systemd:
            link = os.path.join(unit_dir, "multi-user.target.wants", UNIT_NAME)
            if not os.path.islink(link):
                changed = True
                if not check_mode:
                    try:
                        os.makedirs(os.path.dirname(link), exist_ok=True)
                        os.symlink(os.path.join(unit_dir, UNIT_NAME), link)  # what `systemctl enable` does
                    except OSError as exc:
                        raise LivepatchError(
                            "install_failed", "cannot enable %s: %s" % (UNIT_NAME, exc.strerror)
                        ) from None
    return changed


def boot_facts(persist_dir, release, boot_id):
    """What the host keeps for boot on its running release and what the loader did at this boot: {kept: [names]
    in stack order, or None when unreadable (not root), loaded_at_boot: the loader's results at this boot, or
    None when it did not run at this boot}."""
    facts = {"persist_dir": persist_dir, "kept": None, "loaded_at_boot": None}
    try:
        facts["kept"] = [e["name"] for e in manifest(persist_dir, release)]
    except (LivepatchError, OSError) as exc:
        facts["error"] = getattr(exc, "msg", None) or str(exc)
    status = boot_status(persist_dir, release)
    if status and boot_id and status.get("boot_id") == boot_id:
        facts["loaded_at_boot"] = [r for r in status.get("results") or [] if isinstance(r, dict)]
        if status.get("error"):
            facts["boot_error"] = status["error"]
    return facts
