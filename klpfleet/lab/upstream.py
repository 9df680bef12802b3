"""The kernel's own livepatch selftests (tools/testing/selftests/livepatch), from Debian's linux-source package
of the very kernel a lab VM boots, run there unchanged.

Nothing of upstream's is kept in this repository: the scripts and the test modules' C sources come from
`linux-source-<series>` at the version of the lab's `linux-image-<release>`, the modules are built with upstream's
own Makefiles by the suite's compiler and headers (the lab toolchain), and the scripts run as kselftest's runner
runs them: `./test-<name>.sh` from their directory, as root. Two layouts exist: before 6.10 the modules are
`lib/livepatch/*.c`, built into the kernel's module tree (`CONFIG_TEST_LIVEPATCH=m`) and loaded with modprobe;
later they are `selftests/livepatch/test_modules/*.c`, built next to the scripts and loaded with insmod.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from klpfleet.lab.artifacts import LabError, Progress, apt_download, build_in, building, ensure_headers, run

SELFTESTS = "tools/testing/selftests/livepatch"
LIB_MODULES = "lib/livepatch"  # where the test modules lived before they moved under the selftests
SUITE_DIR = "livepatch"  # in the cache entry and, under /root/upstream, in a VM
MODULE_TREE = "kernel/lib/livepatch"  # where `make modules_install` puts them (the old layout's modprobe)
SCRIPT_TIMEOUT = 900.0  # each wait of functions.sh is bounded (600 x 0.1 s); a whole script takes a few minutes


def ensure_upstream_suite(cache: Path, release: str, progress: Progress) -> Path:
    """`upstream-<release>/livepatch/`: the selftests as Debian ships them for the release, with their test
    modules built (under `modules/` for the old layout, in `livepatch/test_modules/` for the new)."""
    final = cache / f"upstream-{release}"
    if (final / SUITE_DIR / "functions.sh").exists():
        return final
    toolchain = ensure_headers(cache, release, progress)
    version = package_version(toolchain, f"linux-image-{release}")
    series = ".".join(version.split(".")[:2])
    progress(f"fetching linux-source-{series} {version} for the kernel's own livepatch selftests")
    with building(final) as scratch, tempfile.TemporaryDirectory(dir=toolchain / "tmp") as work:
        tree = _unpack_source(toolchain, Path(work), series, version)
        suite = tree / SELFTESTS
        inside = "/" + str(tree.relative_to(toolchain))
        headers = f"/usr/src/linux-headers-{release}"
        progress(f"building the selftests' test modules against linux-headers-{release}")
        if (suite / "test_modules").is_dir():
            # upstream's own Makefile, which runs Kbuild on the directory
            run(
                [*build_in(toolchain), "make", "-s", "-C", f"{inside}/{SELFTESTS}/test_modules", f"KDIR={headers}"],
                f"building upstream's test modules for {release} (make)",
            )
            getpid = suite / "test_klp-call_getpid.c"
            if getpid.exists():  # test-syscall.sh's helper; static, as the VMs' userland is another suite's
                run(
                    [
                        *build_in(toolchain),
                        "gcc",
                        "-O2",
                        "-static",
                        "-o",
                        f"{inside}/{SELFTESTS}/test_klp-call_getpid",
                        f"{inside}/{SELFTESTS}/test_klp-call_getpid.c",
                    ],
                    f"building test_klp-call_getpid for {release} (gcc)",
                )
        else:
            run(
                [
                    *build_in(toolchain),
                    "make",
                    "-s",
                    "-C",
                    headers,
                    f"M={inside}/{LIB_MODULES}",
                    "CONFIG_TEST_LIVEPATCH=m",
                    "modules",
                ],
                f"building upstream's test modules for {release} (make)",
            )
            (scratch / "modules").mkdir()
            for ko in (tree / LIB_MODULES).glob("*.ko"):
                shutil.copy2(ko, scratch / "modules" / ko.name)
        if not any((scratch / "modules").glob("*.ko")) and not any((suite / "test_modules").glob("*.ko")):
            raise LabError(f"building upstream's test modules for {release}: no .ko came out")
        for junk in (suite / "test_modules").glob("*"):
            if junk.is_file() and junk.suffix != ".ko":
                junk.unlink()  # the build's intermediates; the C sources stay in Debian's package
        shutil.copytree(suite, scratch / SUITE_DIR, symlinks=False)
        (scratch / "VERSION").write_text(f"linux-source-{series} {version}\n")
    return final


def _unpack_source(toolchain: Path, work: Path, series: str, version: str) -> Path:
    """Download linux-source-<series>=<version> in the toolchain and unpack only the livepatch selftests and the
    old layout's test modules; returns the unpacked tree's top directory."""
    deb = apt_download(toolchain, work, f"linux-source-{series}={version}")
    tarball = f"usr/src/linux-source-{series}.tar.xz"
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as package:  # noqa: S603,S607
        run_with_stdin(["tar", "-x", "-C", str(work), f"./{tarball}"], package, f"unpacking {deb.name}")
    deb.unlink()
    top = f"linux-source-{series}"
    run(["tar", "-xJf", str(work / tarball), "-C", str(work), f"{top}/{SELFTESTS}"], f"unpacking {top}/{SELFTESTS}")
    if not (work / top / SELFTESTS / "test_modules").is_dir():
        run(
            ["tar", "-xJf", str(work / tarball), "-C", str(work), f"{top}/{LIB_MODULES}"],
            f"unpacking {top}/{LIB_MODULES}",
        )
    (work / tarball).unlink()
    return work / top


def run_with_stdin(argv: list[str], producer: subprocess.Popen[bytes], what: str) -> None:
    proc = subprocess.run(argv, stdin=producer.stdout, capture_output=True, check=False)  # noqa: S603 - argv list
    if producer.wait() != 0 or proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LabError(f"{what} failed: {tail[0]}")


def package_version(toolchain: Path, package: str) -> str:
    """The candidate version of a package in the toolchain's apt (the lab kernel's own version)."""
    out = run(
        ["chroot", str(toolchain), "apt-cache", "show", "--no-all-versions", package], f"apt-cache show {package}"
    )
    found = re.search(r"^Version: (\S+)$", out, re.M)
    if not found:
        raise LabError(f"apt-cache show {package}: no Version")
    return found.group(1)


def place_in_layer(staging: Path, release: str, cache_entry: Path) -> None:
    """Put the suite under /root/upstream in a VM's lab layer, and the old layout's modules where modprobe
    finds them (the VM's /init runs depmod)."""
    shutil.copytree(cache_entry / SUITE_DIR, staging / "root" / "upstream" / SUITE_DIR, symlinks=False)
    for ko in sorted((cache_entry / "modules").glob("*.ko")):
        dest = staging / "usr" / "lib" / "modules" / release / MODULE_TREE / ko.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ko, dest)
