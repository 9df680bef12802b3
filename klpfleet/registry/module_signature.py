"""A kernel module's appended signature (scripts/sign-file's format), read as kmod's modinfo reads it.

The file ends with `~Module signature appended~\\n`, before it a `struct module_signature` (algo, hash, id_type,
signer_len, key_id_len, 3 bytes of padding, sig_len big-endian) and before that the signature: a PKCS#7/CMS
SignedData without certificates whose SignerInfo names the key by issuer and serial number (sign-file's
default) or by subject key identifier (`sign-file -k`). asn1crypto parses the DER.
"""

from __future__ import annotations

import struct
from typing import Any

from klpfleet.registry.modinfo import ModuleFileError

MARKER = b"~Module signature appended~\n"
INFO_SIZE = 12
PKEY_ID_PKCS7 = 2
MAX_SIGNATURE = 64 * 1024


def read_signature(data: bytes, label: str) -> dict[str, Any] | None:
    """None for an unsigned module; else {signer, key_id, key_id_type, hash_algo}. A signature that cannot be
    parsed is a ModuleFileError: the kernel would refuse it on a host that checks, so would we."""
    if not data.endswith(MARKER):
        return None
    end = len(data) - len(MARKER)
    if end < INFO_SIZE:
        raise ModuleFileError(f"{label}: truncated module signature")
    _algo, _hash, id_type, signer_len, key_id_len, sig_len = struct.unpack_from(">BBBBB3xI", data, end - INFO_SIZE)
    if id_type != PKEY_ID_PKCS7 or signer_len or key_id_len:
        raise ModuleFileError(f"{label}: module signature of type {id_type}, not PKCS#7 (the only one kernels take)")
    if not 0 < sig_len <= min(MAX_SIGNATURE, end - INFO_SIZE):
        raise ModuleFileError(f"{label}: module signature of {sig_len} bytes does not fit the file")
    der = data[end - INFO_SIZE - sig_len : end - INFO_SIZE]
    try:
        return _signer(der)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ModuleFileError(f"{label}: module signature is not PKCS#7 SignedData ({exc})") from None


def _signer(der: bytes) -> dict[str, Any]:
    from asn1crypto import cms

    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise ValueError("not signed data")
    signers = info["content"]["signer_infos"]
    if len(signers) != 1:
        raise ValueError(f"{len(signers)} signers")
    signer = signers[0]
    sid = signer["sid"]
    hash_algo = signer["digest_algorithm"]["algorithm"].native
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        names = issuer.native
        common = names.get("common_name") or names.get("organization_name") or issuer.human_friendly
        serial = sid.chosen["serial_number"].native
        return {
            "signer": str(common),
            "key_id": _colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")),
            "key_id_type": "serial",
            "hash_algo": hash_algo,
        }
    return {
        "signer": None,
        "key_id": _colon_hex(sid.chosen.native),
        "key_id_type": "subject_key_identifier",
        "hash_algo": hash_algo,
    }


def _colon_hex(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def stored_signature(value: Any) -> dict[str, Any] | None:
    """A signature as kept in the database, believed only in the shape read_signature writes."""
    if not isinstance(value, dict):
        return None
    keys = ("signer", "key_id", "key_id_type", "hash_algo")
    if set(value) != set(keys) or not all(v is None or (isinstance(v, str) and len(v) < 512) for v in value.values()):
        return None
    return {k: value[k] for k in keys}
