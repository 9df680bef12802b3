"""The package a kernel release came from, as a purl, so that a scanner reading a VEX document can match its
statements to the kernel package it found on the host.

A release names its package on the distributions klpfleet's users run: Debian's `6.1.0-56-amd64` is package
`linux-image-6.1.0-56-amd64`, Ubuntu's `5.15.0-91-generic` is `linux-image-5.15.0-91-generic`, a RHEL-family
`5.14.0-427.13.1.el9_4.x86_64` is package `kernel`, version `5.14.0-427.13.1.el9_4` (namespace `redhat`, Rocky's
and Alma's included), SUSE's `5.14.21-150500.55.39-default` is `kernel-default`. A release none of these rules
knows is `pkg:generic/linux@RELEASE`. Debian-family purls carry no version: the release names the package, and
every version of that package is the same kernel ABI.
"""

from __future__ import annotations

import re

from packageurl import PackageURL

DEBIAN_FLAVOURS = re.compile(r"-(?:cloud-|rt-)?(amd64|arm64|armmp|armmp-lpae|686|686-pae|ppc64el|s390x|riscv64)$")
UBUNTU_FLAVOURS = re.compile(r"-(generic|generic-64k|lowlatency|aws|azure|gcp|gke|oracle|kvm|ibm|raspi|nvidia)$")
RPM_RELEASE = re.compile(r"^(?P<version>[0-9][0-9.]*)-(?P<release>[^-]+?)\.(?P<arch>x86_64|aarch64|ppc64le|s390x)$")
RPM_VENDORS = (("el", "redhat"), ("fc", "fedora"), ("amzn", "amazon"), ("oc", "opencloudos"))
SUSE_RELEASE = re.compile(r"^(?P<version>[0-9][0-9.]*-[0-9][0-9.]*)-(?P<flavour>default|azure|rt|64kb)$")


def kernel_purl(release: str) -> str:
    """The kernel package's purl for a validated kernel release (names.valid_kernel_release)."""
    debian = DEBIAN_FLAVOURS.search(release)
    if debian:
        return PackageURL("deb", "debian", f"linux-image-{release}", qualifiers=_arch(debian[1])).to_string()
    if UBUNTU_FLAVOURS.search(release):
        return PackageURL("deb", "ubuntu", f"linux-image-{release}").to_string()
    rpm = RPM_RELEASE.match(release)
    if rpm:
        vendor = next((name for tag, name in RPM_VENDORS if re.search(rf"\.{tag}[0-9]", "." + rpm["release"])), None)
        if vendor:
            version = f"{rpm['version']}-{rpm['release']}"
            return PackageURL("rpm", vendor, "kernel", version, {"arch": rpm["arch"]}).to_string()
    suse = SUSE_RELEASE.match(release)
    if suse:
        return PackageURL("rpm", "suse", f"kernel-{suse['flavour']}", suse["version"]).to_string()
    return PackageURL("generic", None, "linux", release).to_string()


def _arch(flavour: str) -> dict[str, str] | None:
    return {"arch": flavour} if flavour in ("amd64", "arm64", "ppc64el", "s390x", "riscv64") else None
