from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from klpfleet.cli.context import DURATION
from klpfleet.cli.output import emit, info, output_option, printable, table
from klpfleet.collection import sim_contract

_, DEFAULT_KERNEL_RELEASE = sim_contract()


@click.group()
def sim() -> None:
    """Simulated kernels, hosts and fleets (for tests, demos and trying things safely)."""


@sim.command("build-patch")
@click.argument("spec_file", metavar="SPEC.yml")
@click.option("-o", "--out", "out", required=True, metavar="NAME.ko", help="Where to write the module.")
def build_patch(spec_file: str, out: str) -> None:
    """Build a simulated module (a real ELF .ko carrying its spec) from SPEC.yml."""
    from klpfleet.sim.spec import load_spec_file, write_ko

    spec = load_spec_file(spec_file)
    path = write_ko(spec, out)
    info(
        f"built {path} ({spec['name']}, {'livepatch' if spec['livepatch'] else 'module'} for {spec['kernel_release']})"
    )


@sim.command("build-catalog")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kernel-release", default=DEFAULT_KERNEL_RELEASE, show_default=True)
def build_catalog(directory: str, kernel_release: str) -> None:
    """Write the kernel selftest modules (test_klp_*) as simulated .ko files into DIRECTORY."""
    from klpfleet.sim import catalog
    from klpfleet.sim.spec import write_ko

    for name in catalog.names():
        write_ko(catalog.catalog_spec(name, kernel_release), Path(directory) / f"{name}.ko")
    info(f"wrote {len(catalog.names())} modules to {directory}")


@sim.group()
def host() -> None:
    """One simulated host."""


@host.command("create")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kernel-release", default=DEFAULT_KERNEL_RELEASE, show_default=True)
@click.option("--speed", default=1.0, show_default=True, help="Kernel seconds per wall second (0: only sleeps count).")
def host_create(directory: str, kernel_release: str, speed: float) -> None:
    """Make a simulated host whose kernel state lives in DIRECTORY."""
    from klpfleet.sim.fleet import create_host

    create_host(Path(directory), kernel_release, speed=speed)
    info(f"simulated host in {directory} running {kernel_release}")


@host.command("reboot")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kernel-release", default=None, help="Boot another kernel release (default: the one it runs).")
@click.option(
    "--timeout",
    type=DURATION,
    default="60s",
    show_default=True,
    help="The boot loader's wait for each transition.",
)
@click.option("--no-boot-loader", is_flag=True, help="Boot with klpfleet.boot=0 (a rescue boot): nothing is loaded.")
@output_option
def host_reboot(directory: str, kernel_release: str | None, timeout: float, no_boot_loader: bool, output: str) -> None:
    """Reboot a simulated host: a fresh kernel, then the boot loader loads the patches kept for its release.

    Exit status: 0 every kept patch loaded (or none kept), 1 a kept patch failed to load at boot, 2 bad input."""
    from klpfleet.sim.fleet import reboot_host

    status = reboot_host(Path(directory), kernel_release, timeout, boot_loader=not no_boot_loader)

    def render(d: dict[str, Any], out: Any) -> None:
        info(f"{directory} booted {d['kernel_release']} (boot id {d['boot_id']})")
        if d.get("error"):
            info(f"boot loader: {d['error']}")
        if d.get("skipped"):
            info(f"boot loader skipped ({d['skipped']})")
            return
        rows = [[r["name"], r["outcome"], r.get("klp_error") or "", r.get("msg") or ""] for r in d["results"]]
        if rows:
            table(None, ["patch", "outcome", "klp_error", "message"], rows, out)
        else:
            info("no patches kept for this kernel release")

    emit("boot", status, output, render)
    failed = [r for r in status["results"] if r["outcome"] not in ("applied", "already_applied")]
    click.get_current_context().exit(1 if failed or status.get("error") else 0)


@host.command("log")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--selftest-filter", is_flag=True, help="Filter as the kernel selftests do.")
def host_log(directory: str, selftest_filter: bool) -> None:
    """Print a simulated host's kernel log (like dmesg)."""
    from klpfleet.collection import module_util

    sim_kernel = module_util("_sim_kernel")
    from klpfleet.errors import UsageError
    from klpfleet.sim.scenario import selftest_filter as sf

    try:
        with sim_kernel.SimHost(directory) as kernel:
            records = list(kernel.s["log"])
    except OSError as exc:
        raise UsageError(f"{directory}: {exc.strerror}") from None
    from klpfleet.sim.kerneltools import dmesg_lines

    lines = dmesg_lines(records)
    if selftest_filter:
        lines = sf([text for _, _, text in records])
    click.echo("\n".join(lines))


def _selftests_table(data: dict[str, Any], out: Any) -> None:
    rows = [
        (
            s["script"],
            s["verdict"],
            f"{sum(t['ok'] for t in s['tests'])}/{len(s['tests'])}",
            s["seconds"],
            s["reason"],
        )
        for s in data["scripts"]
    ]
    title = f"the kernel's livepatch selftests against the simulator ({data['release']})"
    table(title, ["script", "verdict", "tests ok", "seconds", "why not modelled"], rows, out)
    for s in data["scripts"]:
        if s["verdict"] == "fail":
            out.print(f"\n{s['script']} (exit {s['exit_code']}):", markup=False, highlight=False)
            out.print(printable(s["detail"], keep_newlines=True), markup=False, highlight=False)


@sim.command("selftests")
@click.argument("suite", type=click.Path(file_okay=False, exists=True), metavar="SUITE_DIR")
@click.argument("scripts", nargs=-1, metavar="[test-NAME.sh]...")
@click.option(
    "--kernel-release", default=DEFAULT_KERNEL_RELEASE, show_default=True, help="The kernel the simulator plays."
)
@output_option
def selftests(suite: str, scripts: tuple[str, ...], kernel_release: str, output: str) -> None:
    """Run the kernel's own livepatch selftests (a tools/testing/selftests/livepatch directory, unchanged)
    against a fresh simulated host, as on a real machine: the simulated /sys, /proc and /dev/kmsg mounted over
    the real ones in a mount namespace of the scripts' own (FUSE; root needed), the simulator's insmod, rmmod,
    modprobe, modinfo and dmesg first on PATH. A script whose subject is not modelled is reported `out of scope`
    with the reason. Exit status: 0 none failed, 1 one or more failed."""
    import sys

    from klpfleet.sim.upstream_suite import run_suite

    data = run_suite(Path(suite), kernel_release, list(scripts), info)
    emit("sim.selftests", data, output, _selftests_table)
    sys.exit(1 if data["failed"] else 0)


@sim.group()
def fleet() -> None:
    """Many simulated hosts and their Ansible inventory."""


@fleet.command("create")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--spec", "spec_file", required=True, metavar="FLEET.yml")
@output_option
def fleet_create(directory: str, spec_file: str, output: str) -> None:
    """Make a simulated fleet in DIRECTORY and write DIRECTORY/inventory.yml (registers nothing)."""
    from klpfleet.sim.fleet import create_fleet, load_fleet_spec

    result = create_fleet(Path(directory), load_fleet_spec(spec_file))

    def render(d: dict[str, Any], out: Any) -> None:
        table(
            None,
            ["hosts", "groups", "hosts with faults", "inventory"],
            [[d["hosts"], d["groups"], d["faults"], d["inventory"]]],
            out,
        )

    emit("sim.fleet", result, output, render)


@fleet.command("exporter")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--listen", default="127.0.0.1:9101", show_default=True, metavar="ADDRESS:PORT")
@click.option("--baseline", multiple=True, metavar="NAME=VALUE", help="A metric's value where no patch adds to it.")
def fleet_exporter(directory: str, listen: str, baseline: tuple[str, ...]) -> None:
    """Serve the fleet's simulated service metrics (klpfleet_sim_*{host}) for Prometheus until Ctrl-C: each
    host's baseline plus what the patches loaded there declare in their spec's `metrics`."""
    import time

    from klpfleet.sim.exporter import parse_baseline, serve

    address, _, port = listen.rpartition(":")
    if not address or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.UsageError(f"--listen: {listen!r} is not ADDRESS:PORT")
    server, _ = serve(Path(directory), address, int(port), parse_baseline(list(baseline)))
    click.echo(f"serving {directory}'s metrics on http://{listen}/metrics (Ctrl-C ends)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@sim.command("run")
@click.argument("scenario", metavar="SCENARIO.yml")
@click.option("--kernel-release", default=DEFAULT_KERNEL_RELEASE, show_default=True)
def run(scenario: str, kernel_release: str) -> None:
    """Run a selftest-style scenario on a fresh simulated host; print its kernel log filtered as the
    kernel selftests filter it."""
    from klpfleet.sim.scenario import ScenarioFailed, load_scenario, run_scenario

    steps = load_scenario(scenario)
    try:
        lines = run_scenario(steps, kernel_release)
    except ScenarioFailed as exc:
        raise ScenarioFailed(f"scenario {scenario}: {exc}") from None
    click.echo("\n".join(lines))
