# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The patch's .ko on the host: a copy named by its sha256 in a directory only its owner can write.

The patch module's action plugin sends the .ko's bytes with the module's arguments, so that copying, checking
and loading are one module run on the host (Ansible's copy would be several round trips more). The bytes are
checked before anything is written, written to a temporary file beside the copy and renamed into place, so a
half-written copy is never seen; apply_patch hashes the copy again right before insmod.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import stat
import tempfile

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError, file_sha256

DEFAULT_DIR = "/var/lib/klpfleet/patches"
SHA256_HEX = frozenset("0123456789abcdef")


def default_dir(backend, sim_root):
    """Where copies live: a fixed root-only directory, inside the host's own directory on simulated hosts."""
    return os.path.join(sim_root, "patches") if backend == "sim" and sim_root else DEFAULT_DIR


def decode(content):
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise LivepatchError("invalid_argument", "content is not base64 (it is set by the action plugin)") from None


def sha256_hex(value):
    """The sha256 as 64 lower-case hex digits; it names a file, so nothing else is accepted."""
    wanted = value.lower() if isinstance(value, str) else ""
    if len(wanted) != 64 or not set(wanted) <= SHA256_HEX:
        raise LivepatchError("invalid_argument", "sha256 must be 64 hex digits (got %r)" % (str(value)[:80],))
    return wanted


def checked_sha256(data, expected):
    """The data's sha256, refused when the task expected another one."""
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None:
        wanted = sha256_hex(expected)
        if wanted != actual:
            raise LivepatchError(
                "checksum_mismatch",
                "the .ko sent does not match the expected sha256",
                expected_sha256=wanted,
                actual_sha256=actual,
            )
    return actual


def _trusted_owner(st):
    return st.st_uid in (0, os.geteuid())


def _others_can_write(st):
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_ancestors(path):
    """Refuse a path whose directories above it another user could change: each one, as written and as the
    links in it resolve, must be owned by root or by us and writable by nobody else (a sticky directory such as
    /tmp is fine above us: nobody else can rename or delete what we own in it). Otherwise that user could swap a
    .ko between its sha256 check and insmod, or replace the boot manifest."""
    path = os.path.abspath(path)
    chains = [path, os.path.realpath(path)]
    for chain in chains:
        current = chain
        while True:
            parent = os.path.dirname(current)
            try:
                st = os.lstat(current)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise LivepatchError("install_failed", "cannot look at %s: %s" % (current, exc.strerror)) from None
            else:
                if not _trusted_owner(st):
                    raise LivepatchError(
                        "invalid_argument",
                        "%s is owned by uid %d, neither root nor this user: everything above a directory klpfleet keeps"
                        " modules in must be" % (current, st.st_uid),
                    )
                if stat.S_ISDIR(st.st_mode) and _others_can_write(st) and not st.st_mode & stat.S_ISVTX:
                    raise LivepatchError(
                        "invalid_argument",
                        "%s can be written by other users: choose a directory below directories only root (or this "
                        "user) can write" % current,
                    )
            if parent == current:
                break
            current = parent


def usable_directory(directory):
    """Whether the directory exists; refuses one others could write to or that another user owns, or that lies
    below such a directory (its mode is never changed)."""
    if not os.path.isabs(directory):
        raise LivepatchError("invalid_argument", "remote_dir must be an absolute path on the host (got %s)" % directory)
    check_ancestors(os.path.dirname(os.path.abspath(directory)))
    try:
        st = os.lstat(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise LivepatchError("install_failed", "cannot look at %s: %s" % (directory, exc.strerror)) from None
    if not stat.S_ISDIR(st.st_mode) or _others_can_write(st) or st.st_uid != os.geteuid():
        raise LivepatchError(
            "invalid_argument",
            "%s exists and is not a directory only this user (uid %d) owns and can write: choose another remote_dir "
            "(klpfleet never changes the mode or owner of a directory it did not create)" % (directory, os.geteuid()),
        )
    return True


def check_file(path):
    """Refuse a kept file (a .ko, the boot manifest) that another user owns or could write."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise LivepatchError("install_failed", "cannot look at %s: %s" % (path, exc.strerror)) from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or _others_can_write(st):
        raise LivepatchError(
            "invalid_argument",
            "%s is not a regular file only this user (uid %d) owns and can write" % (path, os.geteuid()),
        )


def install(data, directory, sha256, check_mode=False):
    """(path, installed): the copy of `data` at DIRECTORY/SHA256.ko, written unless an identical one is there."""
    exists = usable_directory(directory)
    path = os.path.join(directory, sha256 + ".ko")
    if exists and os.path.isfile(path) and file_sha256(path) == sha256:
        return path, False
    if check_mode:
        return path, True
    try:
        if not exists:
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)  # whatever the umask
        write_atomically(path, data, 0o400)
    except OSError as exc:
        raise LivepatchError("install_failed", "cannot write %s: %s" % (path, exc.strerror or exc)) from None
    return path, True


def write_atomically(path, data, mode):
    """Write data to a temporary file beside path, fsync it and rename it into place (then fsync the directory,
    so the rename survives a power cut): a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path)[:16] + ".", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def discard(directory, sha256, check_mode=False):
    """Delete the copy DIRECTORY/SHA256.ko if there is one; whether there was."""
    usable_directory(directory)
    path = os.path.join(directory, sha256_hex(sha256) + ".ko")
    if not os.path.isfile(path):
        return False
    if not check_mode:
        try:
            os.unlink(path)
        except OSError as exc:
            raise LivepatchError("install_failed", "cannot delete %s: %s" % (path, exc.strerror)) from None
    return True
