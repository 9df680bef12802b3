"""What the lab boots, built once and cached per kernel release: Debian's kernel image, its NIC driver,
the test modules built against the matching headers, and a debootstrap root filesystem.

Everything runs as argv lists (apt-get, dpkg-deb, make, debootstrap, cpio); nothing here is built
from host or inventory data. A cache entry is written to a temporary name and renamed when complete, so
an interrupted build is redone, never half-used.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from klpfleet.errors import KlpfleetError, UsageError

ROOTFS_SUITE = "bookworm"  # the VMs' userland, whatever kernel boots them
# procps: sysctl, which the kernel's own selftests use (kernel.ftrace_enabled)
ROOTFS_PACKAGES = ("python3-minimal", "python3", "openssh-server", "kmod", "iproute2", "procps")
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
REBUILT = "test_klp_livepatch"  # also built a second time, with -DLAB_REBUILD, into rebuilt/
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_LOCK_WAIT = 60 * 60.0  # longer than the slowest cold build of one kernel's artifacts

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
def cache_locked(cache: Path, progress: Progress, wait: float = CACHE_LOCK_WAIT) -> Iterator[None]:
    """One builder of the cache at a time: a second `lab up` or `lab prepare` started meanwhile waits (bounded)
    rather than replacing an artifact the first is building or reading."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as handle:
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the lab cache {cache} is still being built by another klpfleet after {wait / 60:.0f} min"
                    ) from None
                if not said:
                    progress("waiting for another klpfleet's build of the lab cache")
                    said = True
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


# -- kernel release and its toolchain --------------------------------------------------------------------
#
# Each Debian suite's kernel is built with that suite's compiler, so its test modules are too: a cached
# `debootstrap --variant=buildd` tree of the suite (its gcc and linux-headers-amd64) is the toolchain, and
# apt inside it fetches the kernel image. The host's own apt sources are never touched.

# suite -> the release pattern of its kernels (Debian 11, 12, 13, and the newer kernels of 13's backports)
SUITES = {
    "bullseye": re.compile(r"^5\.10\.0-(\d+)-amd64$"),
    "bookworm": re.compile(r"^6\.1\.0-(\d+)-amd64$"),
    "trixie": re.compile(r"^6\.12\.(\d+)\+deb13(?:u\d+)?-amd64$"),
    "trixie-backports": re.compile(r"^(?:6\.(?:1[3-9])|[7-9]\.\d+)\.\d+\+deb13-amd64$"),
}
DEFAULT_SUITE = "bookworm"
# A backports suite is built in its base suite's toolchain, with the backports archive added to its apt.
BACKPORTS_OF = {"trixie-backports": "trixie"}
E1000_PATHS = (E1000, E1000 + ".xz")  # trixie compresses its modules


def suite_of(release: str) -> str | None:
    return next((suite for suite, pattern in SUITES.items() if pattern.match(release)), None)


def release_numbers(release: str) -> tuple[int, ...]:
    """The release's numbers in order (newer is larger within a suite)."""
    return tuple(int(n) for n in re.findall(r"\d+", release))


def ensure_toolchain(cache: Path, suite: str, progress: Progress) -> Path:
    """The suite's build tree: gcc, make and the newest linux-headers-amd64 of the suite (a backports suite:
    its base suite's tree, whose apt also reads the backports archive)."""
    base = BACKPORTS_OF.get(suite)
    if base:
        return _with_backports(ensure_toolchain(cache, base, progress), suite, progress)
    final = cache / f"toolchain-{suite}"
    if (final / "usr" / "bin" / "gcc").exists():
        return final
    if os.geteuid() != 0:
        raise LabError(f"building the {suite} toolchain needs root (debootstrap)")
    progress(f"building the {suite} toolchain (debootstrap buildd with linux-headers-amd64, about a minute)")
    with building(final) as scratch:
        run(
            ["debootstrap", "--variant=buildd", "--include=linux-headers-amd64", suite, str(scratch), mirror()],
            f"debootstrap {suite}",
        )
    return final


def _with_backports(toolchain: Path, suite: str, progress: Progress) -> Path:
    listing = toolchain / "etc" / "apt" / "sources.list.d" / f"{suite}.list"
    if not listing.exists():
        progress(f"adding {suite} to the {BACKPORTS_OF[suite]} toolchain's apt sources")
        scratch = listing.with_suffix(".tmp")
        scratch.write_text(f"deb {mirror()} {suite} main\n")
        scratch.rename(listing)
    if not list((toolchain / "var" / "lib" / "apt" / "lists").glob(f"*_dists_{suite}_*Packages*")):
        run(["chroot", str(toolchain), "apt-get", "update", "-q"], f"apt-get update ({suite})")
    return toolchain


def build_in(toolchain: Path) -> list[str]:
    """The argv prefix that runs a build tool inside the toolchain, with a /proc of its own (objtool of 6.19
    and later reads it) that goes away with the process."""
    return ["unshare", f"--mount-proc={toolchain / 'proc'}", "chroot", str(toolchain)]


def toolchain_releases(toolchain: Path, suite: str) -> list[str]:
    """The suite's releases whose headers the toolchain holds, newest first; for a backports suite, those its
    archive offers (its headers are installed on first use)."""
    if suite in BACKPORTS_OF:
        out = run(["chroot", str(toolchain), "apt-cache", "pkgnames", "linux-headers-"], "apt-cache pkgnames")
        found = [name.removeprefix("linux-headers-") for name in out.split()]
    else:
        src = toolchain / "usr" / "src"
        found = [p.name.removeprefix("linux-headers-") for p in src.glob("linux-headers-*-amd64")]
    return sorted((r for r in found if suite_of(r) == suite), key=release_numbers, reverse=True)


def cached_releases(cache: Path) -> list[str]:
    found = [p.name.removeprefix("kernel-") for p in cache.glob("kernel-*") if (p / "vmlinuz").exists()]
    return sorted((r for r in found if suite_of(r)), key=release_numbers, reverse=True)


def choose_release(cache: Path, wanted: str | None, progress: Progress) -> str:
    """`--kernel`: a release (6.1.0-56-amd64), a suite (bullseye, bookworm, trixie, trixie-backports) for its
    newest kernel, or nothing for the newest cached bookworm kernel, else bookworm's newest."""
    suite = wanted if wanted in SUITES else None
    if wanted and not suite:
        if not suite_of(wanted):
            raise UsageError(
                f"--kernel {wanted!r}: expected a suite ({', '.join(SUITES)}) or one of its releases, "
                "such as 5.10.0-32-amd64, 6.1.0-56-amd64, 6.12.57+deb13-amd64 or 7.3.4+deb13-amd64"
            )
        return wanted
    if not suite:
        cached = [r for r in cached_releases(cache) if suite_of(r) == DEFAULT_SUITE]
        if cached:
            return cached[0]
        suite = DEFAULT_SUITE
    releases = toolchain_releases(ensure_toolchain(cache, suite, progress), suite)
    if not releases:
        raise LabError(f"the {suite} toolchain has no linux-headers-*-amd64 of {suite}")
    return releases[0]


def ensure_headers(cache: Path, release: str, progress: Progress) -> Path:
    """The toolchain of the release's suite, holding the release's headers (installed there when missing)."""
    suite = suite_of(release)
    if suite is None:
        raise UsageError(f"no Debian suite ships kernel {release}")
    toolchain = ensure_toolchain(cache, suite, progress)
    if not (toolchain / "usr" / "src" / f"linux-headers-{release}").is_dir():
        progress(f"installing linux-headers-{release} in the {suite} toolchain")
        target = ["-t", suite] if suite in BACKPORTS_OF else []  # its dependencies from backports too
        run(
            ["chroot", str(toolchain), "apt-get", "install", "-y", "-q", *target, f"linux-headers-{release}"],
            f"apt-get install linux-headers-{release} ({suite})",
        )
    return toolchain


def ensure_kernel(cache: Path, release: str, progress: Progress) -> Path:
    """vmlinuz and the NIC driver, extracted from Debian's image package of the release's suite."""
    final = cache / f"kernel-{release}"
    if (final / "vmlinuz").exists():
        return final
    toolchain = ensure_headers(cache, release, progress)
    progress(f"fetching linux-image-{release} (apt-get download in the toolchain)")
    with building(final) as scratch, tempfile.TemporaryDirectory(dir=toolchain / "tmp") as download:
        tree = scratch / "tree"
        _fetch_and_unpack(toolchain, Path(download), f"linux-image-{release}", tree)
        places = (tree / "boot" / f"vmlinuz-{release}", tree / "usr" / "lib" / "modules" / release / "vmlinuz")
        if not places[0].exists():
            # Since 6.19 the image package is a metapackage: vmlinuz (in the module tree) and the modules come
            # in two others.
            for part in (f"linux-binary-{release}", f"linux-modules-{release}"):
                _fetch_and_unpack(toolchain, Path(download), part, tree)
        vmlinuz = next((p for p in places if p.exists()), None)
        if vmlinuz is None:
            raise LabError(
                f"linux-image-{release}: no vmlinuz in {', '.join(str(p.relative_to(tree)) for p in places)}"
            )
        shutil.copy2(vmlinuz, scratch / "vmlinuz")
        (scratch / "e1000.ko").write_bytes(_nic_driver(tree, release))
        shutil.rmtree(tree)
    return final


def apt_download(toolchain: Path, download: Path, package: str) -> Path:
    """apt-get download a package (NAME or NAME=VERSION) inside the toolchain into `download` (a directory in
    it, emptied of .deb files first); the one .deb it wrote."""
    for old in download.glob("*.deb"):
        old.unlink()
    inside = "/" + str(download.relative_to(toolchain))
    run(
        ["chroot", str(toolchain), "sh", "-c", 'cd "$1" && apt-get download -q "$2"', "sh", inside, package],
        f"apt-get download {package}",
    )
    debs = list(download.glob("*.deb"))
    if len(debs) != 1:
        raise LabError(f"apt-get download {package}: expected one .deb, found {len(debs)}")
    return debs[0]


def _fetch_and_unpack(toolchain: Path, download: Path, package: str, tree: Path) -> None:
    deb = apt_download(toolchain, download, package)
    run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")


def _nic_driver(tree: Path, release: str) -> bytes:
    for base in (tree / "lib" / "modules" / release, tree / "usr" / "lib" / "modules" / release):
        for rel in E1000_PATHS:
            path = base / rel
            if path.exists():
                data = path.read_bytes()
                return lzma.decompress(data) if path.suffix == ".xz" else data
    raise LabError(f"linux-image-{release} has no e1000 driver")


# -- test modules ---------------------------------------------------------------------------------------


def source_digest(source: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_test_modules(cache: Path, release: str, source: Path, progress: Progress) -> Path:
    """The .ko files of tests/lab/modules, built by Kbuild with the compiler and headers of the release's
    suite (inside its toolchain tree)."""
    if not (source / "Kbuild").exists():
        raise UsageError(f"{source}: not a test module directory (no Kbuild file)")
    final = cache / f"modules-{release}-{source_digest(source)}"
    if final.is_dir() and any(final.glob("*.ko")):
        return final
    toolchain = ensure_headers(cache, release, progress)
    progress(f"building test modules against linux-headers-{release}")
    with building(final) as scratch, tempfile.TemporaryDirectory(dir=toolchain / "tmp") as work:
        src = Path(work) / "src"
        shutil.copytree(source, src)
        inside = "/" + str(src.relative_to(toolchain))
        make = [*build_in(toolchain), "make", "-s", "-C", f"/usr/src/linux-headers-{release}", f"M={inside}"]
        run([*make, "modules"], f"building the test modules for {release} (make)")
        for ko in src.glob("*.ko"):
            shutil.copy2(ko, scratch / ko.name)
        # The same patch rebuilt (another build ID under the same name), as a vendor's next fix would be.
        run([*make, "clean"], "cleaning the test modules (make)")
        run([*make, "KCFLAGS=-DLAB_REBUILD", "modules"], f"rebuilding {REBUILT} for {release} (make)")
        (scratch / "rebuilt").mkdir()
        shutil.copy2(src / f"{REBUILT}.ko", scratch / "rebuilt" / f"{REBUILT}.ko")
    return final


# -- root filesystem ------------------------------------------------------------------------------------


def rootfs_name() -> str:
    recipe = "\n".join([ROOTFS_SUITE, *ROOTFS_PACKAGES, *ROOTFS_PRUNE]).encode()
    return f"rootfs-{ROOTFS_SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}.cpio.gz"


def mirror() -> str:
    return os.environ.get("KLPFLEET_LAB_MIRROR", DEFAULT_MIRROR)


def ensure_rootfs(cache: Path, progress: Progress) -> Path:
    """A debootstrap minbase tree (python3, sshd, kmod, iproute2), packed as a gzip'd newc cpio archive."""
    final = cache / rootfs_name()
    if final.exists():
        return final
    if os.geteuid() != 0:
        raise LabError("building the lab's root filesystem needs root (debootstrap)")
    progress(f"building the root filesystem (debootstrap {ROOTFS_SUITE} minbase, about a minute)")
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=cache) as scratch:
        tree = Path(scratch) / "tree"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(ROOTFS_PACKAGES),
                ROOTFS_SUITE,
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
