"""Signing a kernel module the way the kernel's scripts/sign-file does, with openssl: a detached CMS signature
without certificates or signed attributes, then `struct module_signature` and the marker."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from klpfleet.registry.module_signature import MARKER


def signing_key(directory: Path, common_name: str = "klpfleet test signing key") -> tuple[Path, Path]:
    key, cert = directory / "signing_key.pem", directory / "signing_cert.pem"
    if not key.exists():
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             f"/CN={common_name}/O=klpfleet", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return key, cert


def signed(module: bytes, directory: Path, subject_key_id: bool = False) -> bytes:
    key, cert = signing_key(directory)
    unsigned, sig = directory / "to-sign.ko", directory / "signature.der"
    unsigned.write_bytes(module)
    subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-outform", "DER", "-md",
         "sha256", "-signer", str(cert), "-inkey", str(key), "-in", str(unsigned), "-out", str(sig),
         *(["-keyid"] if subject_key_id else [])],
        check=True, capture_output=True,
    )  # fmt: skip
    der = sig.read_bytes()
    return module + der + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(der)) + MARKER
