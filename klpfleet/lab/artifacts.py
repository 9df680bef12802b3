"""What the lab boots, built once and cached per kernel release: Debian's kernel image, its NIC driver,
the test modules built against the matching headers, and a debootstrap root filesystem.

Everything runs as argv lists (apt-get, dpkg-deb, make, debootstrap, cpio); nothing here is built
from host or inventory data. A cache entry is written to a temporary name and renamed when complete, so
an interrupted build is redone, never half-used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from klpfleet.errors import KlpfleetError, UsageError

SUITE = "bookworm"
ROOTFS_PACKAGES = ("python3-minimal", "python3", "openssh-server", "kmod", "iproute2")
# Trimmed from the root filesystem: it is unpacked into RAM at every boot.
ROOTFS_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)
E1000 = "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"
RELEASE_RE = re.compile(r"^6\.1\.0-(\d+)-amd64$")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Progress = Callable[[str], None]


class LabError(KlpfleetError):
    """The lab could not be built or started; the message says which step and why."""


def cache_dir() -> Path:
    env = os.environ.get("KLPFLEET_LAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "klpfleet" / "lab"


def run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a build tool; on failure raise one line naming the step, with the tool's last words."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603 - argv list
    except FileNotFoundError:
        raise LabError(f"{what}: {argv[0]} is not installed (see .ci/run for the packages the lab needs)") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise LabError(f"{what} failed (exit {proc.returncode}): {tail[0]}")
    return proc.stdout


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """A scratch directory next to `final`, renamed to it only if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield scratch
        if final.exists():
            shutil.rmtree(final)
        scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


# -- kernel release -------------------------------------------------------------------------------------


def _release_number(release: str) -> int:
    match = RELEASE_RE.match(release)
    return int(match.group(1)) if match else -1


def available_releases() -> list[str]:
    """Releases whose image and headers apt can install, newest first."""
    out = run(["apt-cache", "pkgnames", "linux-headers-6.1.0-"], "listing kernel headers")
    headers = {name.removeprefix("linux-headers-") for name in out.split()}
    out = run(["apt-cache", "pkgnames", "linux-image-6.1.0-"], "listing kernel images")
    images = {name.removeprefix("linux-image-") for name in out.split()}
    usable = [r for r in headers & images if RELEASE_RE.match(r)]
    return sorted(usable, key=_release_number, reverse=True)


def cached_releases(cache: Path) -> list[str]:
    found = [p.name.removeprefix("kernel-") for p in cache.glob("kernel-*") if (p / "vmlinuz").exists()]
    usable = [r for r in found if RELEASE_RE.match(r) and headers_dir(r).is_dir()]
    return sorted(usable, key=_release_number, reverse=True)


def choose_release(cache: Path, wanted: str | None) -> str:
    if wanted:
        if not RELEASE_RE.match(wanted):
            raise UsageError(f"--kernel {wanted!r}: expected a Debian 12 release such as 6.1.0-56-amd64")
        return wanted
    cached = cached_releases(cache)
    if cached:
        return cached[0]
    available = available_releases()
    if not available:
        raise LabError("no linux-image-6.1.0-*-amd64 with matching headers in apt's lists (run apt-get update)")
    return available[0]


def headers_dir(release: str) -> Path:
    return Path("/usr/src") / f"linux-headers-{release}"


def ensure_headers(release: str, progress: Progress) -> Path:
    path = headers_dir(release)
    if path.is_dir():
        return path
    if os.geteuid() != 0:
        raise LabError(f"linux-headers-{release} is not installed; as root: apt-get install linux-headers-{release}")
    progress(f"installing linux-headers-{release} (apt-get)")
    run(["apt-get", "install", "-y", "-q", f"linux-headers-{release}"], f"apt-get install linux-headers-{release}")
    return path


def ensure_kernel(cache: Path, release: str, progress: Progress) -> Path:
    """vmlinuz and the NIC driver, extracted from Debian's image package."""
    final = cache / f"kernel-{release}"
    if (final / "vmlinuz").exists():
        return final
    progress(f"fetching linux-image-{release} (apt-get download)")
    with building(final) as scratch:
        run(["apt-get", "download", "-q", f"linux-image-{release}"], f"apt-get download linux-image-{release}", scratch)
        debs = list(scratch.glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download linux-image-{release}: expected one .deb, found {len(debs)}")
        tree = scratch / "tree"
        run(["dpkg-deb", "-x", str(debs[0]), str(tree)], f"unpacking {debs[0].name}")
        shutil.copy2(tree / "boot" / f"vmlinuz-{release}", scratch / "vmlinuz")
        modules = tree / "lib" / "modules" / release
        shutil.copy2(modules / E1000, scratch / "e1000.ko")
        shutil.rmtree(tree)
        debs[0].unlink()
    return final


# -- test modules ---------------------------------------------------------------------------------------


def source_digest(source: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_test_modules(cache: Path, release: str, source: Path, progress: Progress) -> Path:
    """The .ko files of tests/lab/modules, built with Kbuild against the release's headers."""
    if not (source / "Kbuild").exists():
        raise UsageError(f"{source}: not a test module directory (no Kbuild file)")
    final = cache / f"modules-{release}-{source_digest(source)}"
    if final.is_dir() and any(final.glob("*.ko")):
        return final
    headers = ensure_headers(release, progress)
    progress(f"building test modules against {headers.name}")
    with building(final) as scratch:
        src = scratch / "src"
        shutil.copytree(source, src)
        run(["make", "-s", "-C", str(headers), f"M={src}", "modules"], "building the test modules (make)")
        for ko in src.glob("*.ko"):
            shutil.copy2(ko, scratch / ko.name)
        shutil.rmtree(src)
    return final


# -- root filesystem ------------------------------------------------------------------------------------


def rootfs_name() -> str:
    recipe = "\n".join([SUITE, *ROOTFS_PACKAGES, *ROOTFS_PRUNE]).encode()
    return f"rootfs-{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.cpio.gz"


def mirror() -> str:
    return os.environ.get("KLPFLEET_LAB_MIRROR", DEFAULT_MIRROR)


def ensure_rootfs(cache: Path, progress: Progress) -> Path:
    """A debootstrap minbase tree (python3, sshd, kmod, iproute2), packed as a gzip'd newc cpio archive."""
    final = cache / rootfs_name()
    if final.exists():
        return final
    if os.geteuid() != 0:
        raise LabError("building the lab's root filesystem needs root (debootstrap)")
    progress(f"building the root filesystem (debootstrap {SUITE} minbase, about a minute)")
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=cache) as scratch:
        tree = Path(scratch) / "tree"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(ROOTFS_PACKAGES),
                SUITE,
                str(tree),
                mirror(),
            ],
            "debootstrap",
        )
        for rel in ROOTFS_PRUNE:
            shutil.rmtree(tree / rel, ignore_errors=True)
        for key in (tree / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()  # every VM gets host keys of its own
        packed = Path(scratch) / final.name
        pack_tree(tree, packed)
        packed.rename(final)  # complete, or not there at all
    return final


def pack_tree(tree: Path, dest: Path) -> None:
    """`find . | cpio -o -H newc` as root-owned files, gzip'd: the format the kernel unpacks as an initramfs."""
    with tempfile.TemporaryFile() as names:
        names.write(b"".join(str(p.relative_to(tree)).encode() + b"\0" for p in sorted(tree.rglob("*"))))
        names.seek(0)
        argv = ["cpio", "--quiet", "--null", "-o", "-H", "newc", "-R", "0:0"]
        try:
            proc = subprocess.Popen(argv, cwd=tree, stdin=names, stdout=subprocess.PIPE)  # noqa: S603 - argv list
        except FileNotFoundError:
            raise LabError("packing the initramfs: cpio is not installed") from None
        assert proc.stdout is not None
        with gzip.open(dest, "wb", compresslevel=6) as out:
            shutil.copyfileobj(proc.stdout, out, 1 << 20)
        if proc.wait() != 0:
            raise LabError(f"packing {dest.name}: cpio failed")
