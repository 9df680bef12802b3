from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from klpfleet.cli.output import emit, info, output_option, printable, table

LAB_DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default="lab",
    show_default=True,
    help="Where the lab keeps its keys, VM state, inventory and database.",
)


def _table(data: dict[str, Any], out: Any) -> None:
    rows = [
        (vm["name"], vm["release"], f"127.0.0.1:{vm['port']}", vm["pid"], vm["running"], vm["sshd"])
        for vm in data["vms"]
    ]
    title = f"lab {data['dir']}: kernel {data['release'] or '-'}, {data['accel'] or '-'}"
    table(title, ["vm", "kernel", "ssh", "qemu pid", "running", "sshd"], rows, out)


@click.group()
def lab() -> None:
    """Real-kernel lab: Debian 11, 12 or 13's kernel under QEMU, reached over SSH.

    The first `up` of a suite debootstraps its toolchain (gcc and headers), fetches the kernel with apt inside
    it, builds the test modules with it, and builds a root filesystem (root needed, a few minutes); later ones
    reuse the cache
    (KLPFLEET_LAB_CACHE, default ~/.cache/klpfleet/lab).
    """


@lab.command()
@LAB_DIR_OPTION
@click.option("--vms", "count", default=3, show_default=True, help="Number of VMs.")
@click.option(
    "--kernel",
    "release",
    metavar="RELEASE",
    help=(
        "bullseye, bookworm, trixie or trixie-backports (the suite's newest kernel), or a release such as "
        "5.10.0-32-amd64, 6.1.0-56-amd64, 6.12.57+deb13-amd64 or 7.3.4+deb13-amd64 (default: the newest bookworm "
        "kernel cached, else bookworm's newest)."
    ),
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "tcg", "kvm"]),
    default="auto",
    show_default=True,
    help="QEMU accelerator; auto falls back to TCG when KVM hangs.",
)
@click.option("--modules", "module_source", type=click.Path(file_okay=False, exists=True), help="Test module sources.")
@output_option
@click.pass_context
def up(
    ctx: click.Context,
    directory: str,
    count: int,
    release: str | None,
    accel: str,
    module_source: str | None,
    output: str,
) -> None:
    """Boot the VMs, write an inventory and known_hosts, register the VMs in a database.

    The database is --db if given, else <dir>/klpfleet.db.
    """
    from klpfleet.lab.control import up as lab_up

    db_url = (ctx.find_root().obj or {}).get("db_url")
    data = lab_up(
        Path(directory),
        count,
        release=release,
        accel=accel,
        module_source=Path(module_source) if module_source else None,
        db_url=db_url,
        progress=info,
    )
    emit("lab", data, output, _table)
    if output == "table":
        info(f"next: ansible-playbook -i {data['inventory']} playbooks/gather.yml")


@lab.command()
@click.option(
    "--kernel",
    "releases",
    metavar="RELEASE",
    multiple=True,
    help="As for `up`; repeatable (default: the kernel `up` would choose).",
)
@click.option("--modules", "module_source", type=click.Path(file_okay=False, exists=True), help="Test module sources.")
@output_option
def prepare(releases: tuple[str, ...], module_source: str | None, output: str) -> None:
    """Build the cache a lab on these kernels needs (toolchain, kernel, test modules, the kernel's own
    selftests, root filesystem) and boot nothing; a `lab up` started meanwhile waits for it."""
    from klpfleet.lab.control import prepare as lab_prepare

    source = Path(module_source) if module_source else None
    prepared = [lab_prepare(release, source, info) for release in (releases or (None,))]
    emit(
        "lab_prepare",
        {"kernels": prepared},
        output,
        lambda data, out: table(
            "lab cache", ["kernel", "test modules"], [(k["release"], k["test_modules"]) for k in data["kernels"]], out
        ),
    )


@lab.command()
@LAB_DIR_OPTION
@output_option
def status(directory: str, output: str) -> None:
    """The lab's VMs. Exit status: 0 every VM serves SSH, 1 otherwise (or no lab)."""
    from klpfleet.lab.control import describe

    data = describe(Path(directory))
    emit("lab", data, output, _table)
    sys.exit(0 if data["up"] else 1)


@lab.command()
@LAB_DIR_OPTION
@click.argument("vm")
@click.option("--kernel", help="Boot another lab kernel (a suite or a release; default: the lab's kernel).")
@click.option(
    "--kernel-arg",
    "kernel_args",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Add a kernel command-line parameter for this boot (e.g. module.sig_enforce=1); repeatable.",
)
@output_option
def reboot(directory: str, vm: str, kernel: str | None, kernel_args: tuple[str, ...], output: str) -> None:
    """Shut one VM down and boot it again: what a reboot clears goes (a pinned module, everything loaded), its
    /var/lib/klpfleet stays (the patches kept for boot, loaded again by the boot loader). Parameters given with
    --kernel-arg hold for this boot only."""
    from klpfleet.lab.control import reboot as lab_reboot

    emit("lab", lab_reboot(Path(directory), vm, info, kernel, kernel_args), output, _table)


def _selftests_table(data: dict[str, Any], out: Any) -> None:
    rows = [
        (s["script"], s["verdict"], f"{sum(t['ok'] for t in s['tests'])}/{len(s['tests'])}", s["seconds"])
        for s in data["scripts"]
    ]
    title = f"the kernel's livepatch selftests on {data['vm']} ({data['release']}, {data['source']})"
    table(title, ["script", "verdict", "tests ok", "seconds"], rows, out)
    for s in data["scripts"]:
        if s["detail"]:
            out.print(f"\n{s['script']} ({s['verdict']}, exit {s['exit_code']}):", markup=False, highlight=False)
            out.print(printable(s["detail"], keep_newlines=True), markup=False, highlight=False)


@lab.command()
@LAB_DIR_OPTION
@click.option("--vm", default="lab1", show_default=True, help="The VM to run them on.")
@click.argument("scripts", nargs=-1, metavar="[test-NAME.sh]...")
@output_option
def selftests(directory: str, vm: str, scripts: tuple[str, ...], output: str) -> None:
    """Run the kernel's own livepatch selftests (tools/testing/selftests/livepatch, from Debian's linux-source of
    the VM's kernel, unchanged) on a lab VM. Exit status: 0 none failed, 1 one or more failed.

    A failed script can leave its modules loaded: `klpfleet lab reboot VM` cleans the VM.
    """
    from klpfleet.lab.conformance import run_suite

    data = run_suite(Path(directory), vm, list(scripts), info)
    emit("lab.selftests", data, output, _selftests_table)
    sys.exit(1 if data["failed"] else 0)


@lab.command()
@LAB_DIR_OPTION
def down(directory: str) -> None:
    """Stop the VMs (the artifact cache stays)."""
    from klpfleet.lab.control import down as lab_down

    lab_down(Path(directory), info)
