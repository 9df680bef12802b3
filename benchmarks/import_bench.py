"""Benchmark: `klpfleet inventory import` of a large INI inventory against ansible-core parsing it.

Writes an INI file of N hosts in 3 groups (ansible_host, ansible_user, a zone label each), then times, each as
a whole process: ansible-core's InventoryManager parsing the file (the floor any import stands on), the first
import into a fresh SQLite database, a re-import of the unchanged file (answered from the last import's
fingerprint) and one with --reread (parsed again, writing nothing). Prints the ratios and the import's peak
RSS. Targets: first import <= 1.3x the parse, re-import <= 1.0x, peak RSS <= 1 GiB.

    python benchmarks/import_bench.py [--hosts 100000] [--db URL]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARSE = """
import sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
manager = InventoryManager(loader=DataLoader(), sources=[sys.argv[1]])
print(len(manager.get_hosts()))
"""


def write_inventory(path: Path, hosts: int) -> None:
    groups = ("web", "db", "cache")
    with path.open("w") as f:
        for g, group in enumerate(groups):
            f.write(f"[{group}]\n")
            for n in range(g, hosts, len(groups)):
                f.write(f"{group}{n:06d} ansible_host=10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255} zone=z{n % 7}\n")
        f.write("[all:vars]\nansible_user=ops\n")


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the child, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} failed: {proc.stderr.strip()[-500:]}")
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return wall, peak, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "hosts.ini"
        write_inventory(inventory, args.hosts)
        db = args.db or str(Path(tmp) / "k.db")
        klpfleet = [sys.executable, "-m", "klpfleet.cli.main", "--db", db]
        subprocess.run([*klpfleet, "db", "upgrade"], check=True, capture_output=True)
        parse, parse_rss, _ = timed([sys.executable, "-c", PARSE, str(inventory)])
        first, first_rss, _ = timed([*klpfleet, "inventory", "import", "-i", str(inventory)])
        again, again_rss, _ = timed([*klpfleet, "inventory", "import", "-i", str(inventory)])
        reread, reread_rss, _ = timed([*klpfleet, "inventory", "import", "-i", str(inventory), "--reread"])
    print(f"hosts: {args.hosts}  database: {'SQLite' if not args.db else args.db.split(':')[0]}")
    print(f"ansible-core InventoryManager parse: {parse:7.1f} s  peak RSS {parse_rss:6.0f} MiB")
    runs = (("first", first, first_rss), ("again", again, again_rss), ("again, --reread", reread, reread_rss))
    for label, wall, rss in runs:
        print(
            f"klpfleet inventory import ({label + '):':17} {wall:7.1f} s  "
            f"peak RSS {rss:6.0f} MiB  ratio {wall / parse:.2f}"
        )


if __name__ == "__main__":
    main()
