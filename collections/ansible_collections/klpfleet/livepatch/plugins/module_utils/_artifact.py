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


def usable_directory(directory):
    """Whether the directory exists; refuses one others could write to (its mode is never changed)."""
    if not os.path.isabs(directory):
        raise LivepatchError("invalid_argument", "remote_dir must be an absolute path on the host (got %s)" % directory)
    try:
        st = os.lstat(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise LivepatchError("install_failed", "cannot look at %s: %s" % (directory, exc.strerror)) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LivepatchError(
            "invalid_argument",
            "%s exists and is not a directory only its owner can write: choose another remote_dir "
            "(klpfleet never changes the mode of a directory it did not create)" % directory,
        )
    return True


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
