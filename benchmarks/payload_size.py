"""Benchmark: what Ansible sends to a real host for each of the collection's modules.

Runs each module once against localhost as a real (sysfs) host with pipelining off and
ANSIBLE_KEEP_REMOTE_FILES=1, so the AnsiballZ wrapper stays on disk, then prints its size and the
collection files zipped inside it. The simulated kernel must not be among them.

    python benchmarks/payload_size.py
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def payload(module: str, args: str, remote_tmp: Path) -> Path:
    env = dict(
        os.environ,
        ANSIBLE_KEEP_REMOTE_FILES="1",
        ANSIBLE_PIPELINING="False",
        ANSIBLE_REMOTE_TMP=str(remote_tmp),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.minimal",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            module,
            "-a",
            args,
        ],
        env=env,
        capture_output=True,
        check=False,
    )
    found = sorted(remote_tmp.rglob("AnsiballZ_*.py"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"{module}: no AnsiballZ file was kept under {remote_tmp}")
    return found[-1]


def bundled(wrapper: Path) -> list[str]:
    match = re.search(rb"zip_data='([A-Za-z0-9+/=]+)'", wrapper.read_bytes())
    if not match:
        return ["(could not find the zip in the wrapper)"]
    data = base64.b64decode(match.group(1))
    return sorted(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if "klpfleet" in n)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for module, args in (
            ("klpfleet.livepatch.patch", "name=none state=absent backend=sysfs"),
            ("klpfleet.livepatch.patch_info", "backend=sysfs"),
        ):
            wrapper = payload(module, args, Path(tmp) / module)
            names = bundled(wrapper)
            sim = [n for n in names if "_sim_kernel" in n]
            print(
                f"{module}: {wrapper.stat().st_size / 1024:.1f} KiB sent to a real host; simulator inside: "
                f"{'YES' if sim else 'no'}"
            )
            for name in names:
                print(f"    {name}")


if __name__ == "__main__":
    main()
