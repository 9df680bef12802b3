"""`klpfleet demo`: a real rollout on a simulated fleet, with everything under one directory.

The fleet, database, artifacts, Ansible runs and temp files all live under the demo directory; nothing
needs root. The steps are the ones an operator would take, through the same code the commands use.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

from klpfleet.cli.output import console, info
from klpfleet.errors import UsageError
from klpfleet.wording import counted, listed

DEMO_MARKER = ".klpfleet-demo"
CVE_FIX = "livepatch_cve_2026_1234"
NEWER = "livepatch_cve_2026_5678"
NEW_KERNEL = "6.1.0-57-amd64"
BAD = "livepatch_filemap_fault"
BAD_SPEC = """\
name: livepatch_filemap_fault
description: "mm: a fix for a race that makes the service fail 5% of its requests"
replace: false
objects:
  - name: vmlinux
    funcs: [filemap_fault]
metrics: {error_rate: 0.05}   # the simulated service's error rate rises by 0.05 where it is loaded
"""
# The wave's error rate against the hosts not patched yet, measured by Prometheus: more than 1.5 times is a failure.
CANARY_CHECK = {
    "name": "errors-vs-control",
    "query": 'avg(klpfleet_sim_error_rate{host=~"$wave_hosts"})',
    "control": 'avg(klpfleet_sim_error_rate{host=~"$control_hosts"})',
    "condition": "< 1.5",
    "interval": "1s",
    "count": 3,
    "initial_delay": "2s",
}

FLEET = """\
kernel_release: 6.1.0-56-amd64
hosts: {hosts}
speed: 1
labels:
  zone: [a, b, c]
faults:
  sim-05: {{refuse: {{patch: "*", object: vmlinux, errno: EBUSY}}}}    # a pre-patch callback says no
  sim-14: {{refuse: {{patch: "*", object: vmlinux, errno: ENODEV}}}}
  sim-11: {{stall: {{function: "*", seconds: forever, comm: db_writer}}}}  # a task sleeps in patched code
  sim-17: {{unreachable: true}}                                          # its network is down
"""
PATCHES = {
    CVE_FIX: """\
name: livepatch_cve_2026_1234
description: "tcp: fix challenge ACK rate limit (CVE-2026-1234)"
replace: true            # cumulative, as kpatch-build makes them by default
objects:
  - name: vmlinux
    funcs: [tcp_send_challenge_ack]
""",
    NEWER: """\
name: livepatch_cve_2026_5678
description: "netfilter: fix use-after-free (CVE-2026-5678), stacked on top"
replace: false
objects:
  - name: vmlinux
    funcs: [nft_set_elem_destroy]
""",
}


def step(title: str) -> None:
    out = console(stderr=True)
    out.print(f"\n== {title}", style="bold" if out.is_terminal else None, markup=False, highlight=False)


def run_demo(directory: Path, *, fresh: bool, host_count: int) -> None:
    if host_count < 20 or host_count > 200:
        raise UsageError("--hosts must be between 20 and 200 (the demo's faults sit on sim-05 ... sim-17)")
    directory = directory.resolve()
    if fresh and directory.exists():
        if not (directory / DEMO_MARKER).exists():
            raise UsageError(f"{directory} exists and is not a klpfleet demo directory: not removing it")
        shutil.rmtree(directory)
    if (directory / "klpfleet.db").exists():
        raise UsageError(
            f"{directory} already holds a demo: run with --fresh to start over, or look at it with "
            f"`klpfleet --db {directory / 'klpfleet.db'} status`"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).touch()
    # Everything this process and the Ansible runs it starts write goes under the demo directory.
    os.environ.update(
        KLPFLEET_ARTIFACTS=str(directory / "artifacts"),
        KLPFLEET_RUN_DIR=str(directory / "runs"),
        ANSIBLE_LOCAL_TEMP=str(directory / "tmp" / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(directory / "tmp" / "ansible-remote"),
        ANSIBLE_HOME=str(directory / "tmp" / "ansible-home"),
    )
    db_path = directory / "klpfleet.db"
    db_url = f"sqlite:///{db_path}"
    Demo(directory, db_url, host_count).run()


class Demo:
    def __init__(self, directory: Path, db_url: str, hosts: int) -> None:
        self.dir = directory
        self.db_url = db_url
        self.hosts = hosts
        self.k = f"klpfleet --db {directory / 'klpfleet.db'}"

    def run(self) -> None:
        from klpfleet.db.engine import open_database
        from klpfleet.db.migrate import upgrade

        step("1. A database of its own, and a simulated fleet in three zones")
        self.db = open_database(self.db_url, create=True)
        upgrade(self.db)
        (self.dir / "fleet.yml").write_text(FLEET.format(hosts=self.hosts))
        from klpfleet.sim.fleet import create_fleet, load_fleet_spec

        create_fleet(self.dir / "fleet", load_fleet_spec(self.dir / "fleet.yml"))
        info(
            f"{self.hosts} simulated hosts in zones a, b, c; faults (see {self.dir / 'fleet.yml'}):\n"
            "  sim-05, sim-14 refuse the patch in a pre-patch callback; sim-11 has a task asleep in patched\n"
            "  code (its transition stalls); sim-17 is unreachable"
        )
        from klpfleet.inventory.importer import apply_import
        from klpfleet.inventory.sources import read_inventory

        with self.db.session.begin() as s:
            counts = apply_import(s, read_inventory([str(self.dir / "fleet" / "inventory.yml")]), prune=True).counts()
        info(f"$ klpfleet inventory import -i {self.dir / 'fleet' / 'inventory.yml'}   -> {listed(counts)}")

        step("2. Gather: read every host's kernel through Ansible (playbooks/gather.yml)")
        gathered = self.gather("demo-gather")
        reached = sum(1 for r in gathered.results.values() if r.status == "ok")
        info(f"{reached} hosts answered; sim-17 did not (unreachable)")

        step("3. Build and register two livepatches (real ELF .ko files with .modinfo)")
        from klpfleet.registry.patches import add_patch
        from klpfleet.sim.spec import load_spec_file, write_ko

        for name, spec in PATCHES.items():
            spec_file = self.dir / f"{name}.yml"
            spec_file.write_text(spec)
            ko = write_ko(load_spec_file(spec_file), self.dir / f"{name}.ko")
            with self.db.session.begin() as s:
                patch, _ = add_patch(
                    s,
                    ko,
                    description=load_spec_file(spec_file)["description"],
                    cves=[name.removeprefix("livepatch_").upper().replace("_", "-")],
                )
                info(f"$ klpfleet patch add {ko.name}   -> {patch.name} {patch.sha256[:12]} for {patch.kernel_release}")

        step(f"4. Roll out {CVE_FIX}: a canary, then waves walking the zones one by one")
        rid = self.plan(
            CVE_FIX,
            "--waves 1,25%,100% --by zone --max-failed 0 --retry-refused 1 --retry-delay 2s",
            waves="1,25%,100%",
            by="zone",
            max_failed="0",
            retry_refused=1,
            retry_delay="2s",
        )
        final = self.drive(rid)
        if final == "paused":
            self.explain_pause(rid)
            step("5. The stall was backed out and the hosts are clean: promote past the gate")
            info(f"$ {self.k} rollout promote {rid} --wait")
            from klpfleet.controller.control import request
            from klpfleet.states import Request

            request(self.db, rid, Request.PROMOTE, reason="promoted: failures isolated, hosts clean")
            final = self.drive(rid)
        info(f"rollout {rid}: {final}")

        step(f"6. Roll out {NEWER}, stacked on top, in two quick waves")
        rid2 = self.plan(NEWER, "--waves 50%,100% --max-failed 2", waves="50%,100%", max_failed="2")
        info(f"rollout {rid2}: {self.drive(rid2)}")

        step(f"7. Roll back {NEWER} (the newest patch comes off first; nothing else is touched)")
        info(f"$ {self.k} rollback {NEWER} --fast")
        self.rollback(NEWER)

        self.bad_patch()
        self.reboots()

        step("12. Where the fleet stands")
        from klpfleet.cli.status_cmds import status_table
        from klpfleet.reads.fleet_status import fleet_status

        with self.db.engine.connect() as conn:
            status_table(fleet_status(conn), console())
        self.epilogue(rid)

    def reboots(self) -> None:
        from klpfleet.sim.fleet import reboot_host

        step("9. Reboots: two hosts reboot, one boots with klpfleet.boot=0 (a rescue boot), one boots a new kernel")
        hosts = self.dir / "fleet" / "hosts"
        for name, kernel, loader in (
            ("sim-02", None, True),
            ("sim-03", None, True),
            ("sim-04", None, False),
            ("sim-06", NEW_KERNEL, True),
        ):
            boot = reboot_host(hosts / name, kernel, boot_loader=loader)
            flags = (f" --kernel-release {kernel}" if kernel else "") + ("" if loader else " --no-boot-loader")
            loaded = ", ".join(f"{r['name']} {r['outcome']}" for r in boot["results"]) or "nothing loaded"
            info(f"$ klpfleet sim host reboot {hosts / name}{flags}   -> {boot['kernel_release']}: {loaded}")
        info("The boot loader (klpfleet-boot.service on a real host) reloaded the kept patch; gather sees the rest:")
        self.gather("demo-gather-after-reboots")
        with self.db.session() as s:
            from sqlalchemy import select

            from klpfleet.db.models import Host, HostPatch, Patch

            rows = s.execute(
                select(Host.name, HostPatch.state)
                .join(HostPatch, HostPatch.host_id == Host.id)
                .join(Patch, Patch.id == HostPatch.patch_id)
                .where(Patch.name == CVE_FIX, Host.name.in_(["sim-02", "sim-03", "sim-04", "sim-06"]))
                .order_by(Host.name)
            ).all()
        info("  " + ", ".join(f"{h} {state}" for h, state in rows))

        step("10. Who is still exposed? (klpfleet cves; a monitoring check: exit 2 while any host is exposed)")
        from klpfleet.cli.cve_cmds import cves_table
        from klpfleet.reads.exposure import exposure

        info(f"$ {self.k} cve fixed CVE-2026-1234 --kernel-release {NEW_KERNEL}   # the new kernel carries the fix")
        with self.db.session.begin() as s:
            from klpfleet.db import events
            from klpfleet.db.models import CveFix

            s.add(CveFix(cve="CVE-2026-1234", kernel_release=NEW_KERNEL, marked_by="demo"))
            events.add(s, "cve.fixed", actor="demo", cve="CVE-2026-1234", kernel_release=NEW_KERNEL)
        info(f"$ {self.k} cves")
        with self.db.engine.connect() as conn:
            cves_table([e.summary() for e in exposure(conn)], console())

        step("11. Reconcile: a rollout of the hosts that should have the patch and do not, with the usual gates")
        from klpfleet.cli.reconcile_cmds import reconcile_table
        from klpfleet.controller.reconcile import plan_reconcile
        from klpfleet.controller.selection import select_hosts

        policy = self.policy(waves="100%", max_failed="3")
        names = select_hosts(self.db)
        info(f"$ {self.k} reconcile --dry-run")
        reconcile_table(plan_reconcile(self.db, None, names, policy, "reconcile", dry_run=True), console())
        info(f"$ {self.k} reconcile --max-failed 3 --wait")
        for planned in plan_reconcile(self.db, None, names, policy, "reconcile", dry_run=False):
            if planned["rollout"]:
                info(f"rollout {planned['rollout']} ({planned['patch']}): {self.drive(planned['rollout'])}")
        with self.db.engine.connect() as conn:
            (cve,) = [e for e in exposure(conn) if e.cve == "CVE-2026-1234"]
        counts = cve.counts()
        info(
            f"CVE-2026-1234: covered {counts['covered']}, exposed {counts['exposed']} "
            f"({', '.join(f'{r} {n}' for r, n in cve.exposed_by_reason().items()) or 'none'}), "
            f"unknown {counts['unknown']}"
        )

    def bad_patch(self) -> None:
        """A patch that loads fine everywhere but raises the service's error rate: stopped at the canary by what
        Prometheus sees, and rolled back."""
        from klpfleet.reads.metrics import registry_for
        from klpfleet.registry.patches import add_patch
        from klpfleet.sim.monitoring import FleetPrometheus, prometheus_binary
        from klpfleet.sim.spec import load_spec_file, write_ko

        step(f"8. A bad patch, {BAD}: it loads fine, and the service's errors rise where it is loaded")
        if prometheus_binary() is None:
            info("skipped: this act gates the rollout on a real Prometheus (apt-get install prometheus)")
            return
        spec_file = self.dir / f"{BAD}.yml"
        spec_file.write_text(BAD_SPEC)
        ko = write_ko(load_spec_file(spec_file), self.dir / f"{BAD}.ko")
        with self.db.session.begin() as s:
            add_patch(s, ko, description=load_spec_file(spec_file)["description"])
        prometheus = FleetPrometheus(self.dir / "prometheus", self.dir / "fleet", registry_for(self.db.engine.connect))
        try:
            prometheus.start()
            info(f"Prometheus on {prometheus.url} scrapes each host's klpfleet_sim_error_rate and klpfleet's metrics")
            (self.dir / "rollout.yml").write_text(
                f"waves: [1, 100%]\non-failure: rollback\nprometheus: {prometheus.url}\nanalysis:\n"
                f"  - {json.dumps(CANARY_CHECK)}\n"
            )
            rid = self.plan(
                BAD,
                f"--policy {self.dir / 'rollout.yml'}",
                waves="1,100%",
                on_failure="rollback",
                prometheus=prometheus.url,
                analysis=[CANARY_CHECK],
            )
            final = self.drive(rid)
        finally:
            prometheus.close()
        with self.db.session() as s:
            from klpfleet.db.models import Rollout

            r = s.get(Rollout, rid)
            reason = r.pause_reason if r is not None else None
        info(f"rollout {rid}: {final}: {reason}")
        info("The canary's patch came off; no other host ever loaded it.")

    def gather(self, ident: str) -> Any:
        from klpfleet.controller.playbook import run_playbook
        from klpfleet.inventory.export import fleet_inventory
        from klpfleet.runs.types import RunRequest

        return run_playbook(
            RunRequest(
                db=self.db,
                playbook="gather.yml",
                records=fleet_inventory(self.db),
                extravars={},
                runs_in=self.dir / "runs",
                ident=ident,
                forks=12,
            )
        )

    # ------------------------------------------------------------------ helpers

    def policy(self, **options: Any) -> Any:
        from klpfleet.controller.policy import build_policy

        return build_policy(**{"waves": "100%", "forks": 12, "transition_timeout": "3s", **options})

    def plan(self, patch_name: str, shown: str, **options: Any) -> int:
        from klpfleet.controller.plan import create_rollout, make_plan
        from klpfleet.controller.selection import select_hosts
        from klpfleet.registry.patches import get_patch

        policy = self.policy(**options)
        with self.db.session.begin() as s:
            patch = get_patch(s, patch_name)
            plan = make_plan(s, patch, select_hosts(self.db), policy)
            rollout = create_rollout(s, patch, plan, policy, "all")
            rid = rollout.id
        info(f"$ {self.k} rollout create {patch_name} {shown} --transition-timeout 3s")
        for i, (hosts, domain) in enumerate(zip(plan.waves, plan.domains, strict=True)):
            info(f"  wave {i + 1}{f' (zone {domain})' if domain else ''}: {', '.join(hosts)}")
        for host, reason in sorted(plan.excluded.items()):
            info(f"  excluded {host}: {reason}")
        info(f"$ {self.k} rollout start {rid} --wait")
        return rid

    def drive(self, rid: int) -> str:
        from klpfleet.cli.progress import CliProgress
        from klpfleet.controller.driver import Driver

        return Driver(self.db, rid, progress=CliProgress(), actor="demo").drive()

    def explain_pause(self, rid: int) -> None:
        from klpfleet.reads.rollouts import rollout_record

        with self.db.session() as s:
            data = rollout_record(s, rid)
        info(f"\nThe gate fired and paused the rollout: {data['pause_reason']}")
        for w in data["waves"]:
            for h in w["hosts"]:
                if h["outcome"] not in (None, "applied"):
                    info(f"  {h['host']}: {h['outcome']} ({h['error_code'] or '-'}), attempts {h['attempts']}")
        info(
            "A refusal means the kernel said no and cleaned up; a stall was reversed and its module removed;\n"
            "the unreachable host was never touched. No host is half-patched."
        )

    def rollback(self, patch_name: str) -> None:
        from klpfleet.controller.rollback import rollback_batches
        from klpfleet.reads.views import list_hosts
        from klpfleet.runs.types import RunRequest

        with self.db.session() as s:
            hosts = [h["name"] for h in list_hosts(s, patch=patch_name, state="applied")]
        answers = rollback_batches(
            RunRequest(self.db, "", [], {}, self.dir / "runs", "demo-rollback", 12), patch_name, [hosts]
        )
        summary: dict[str, int] = {}
        for a in answers:
            summary[a.result] = summary.get(a.result, 0) + 1
        info(f"{counted(len(answers), 'host')}: {listed(summary)}")

    def epilogue(self, rid: int) -> None:
        from klpfleet.collection import collections_path, playbooks_path

        inv = self.dir / "fleet" / "inventory.yml"
        # In a checkout the README's ./run is the way in; a pip install has klpfleet on its PATH.
        checkout = (collections_path().parent / "run").is_file()
        hint = " (in the checkout, `source .venv/bin/activate` first, or write ./run for klpfleet)" if checkout else ""
        again = "./run demo --fresh" if checkout else f"klpfleet demo --dir {self.dir} --fresh"
        ansible_env = (
            f"KLPFLEET_DB={self.dir / 'klpfleet.db'} ANSIBLE_COLLECTIONS_PATH={collections_path()} "
            "ANSIBLE_CALLBACKS_ENABLED=klpfleet.livepatch.recorder"
        )
        info(
            textwrap.dedent(f"""
            What you just saw
              - a real Ansible run per wave (ansible-runner, playbooks/apply.yml) on {self.hosts} simulated kernels;
              - refusals told apart from stalls and unreachable hosts, a refusal retried, a gate that paused the
                rollout, an operator's promotion, and the newer patch rolled back without touching the older one;
              - a bad patch stopped at its canary by what Prometheus saw (its error rate against the control
                hosts'), and rolled back;
              - reboots: the patch reloaded at boot, lost on a rescue boot, superseded by a new kernel; who is
                exposed to each CVE, and reconcile putting back what was lost;
              - every decision and every host's state recorded in {self.dir / "klpfleet.db"}.

            Try next{hint}
              {self.k} status
              {self.k} hosts --state refused
              {self.k} host sim-11
              {self.k} rollout status {rid}
              {self.k} events --rollout {rid}
              {self.k} sim host log {self.dir / "fleet" / "hosts" / "sim-05"}      # its kernel log
              {ansible_env} \\
                  ansible-playbook -i {inv} {playbooks_path() / "gather.yml"}
              {self.k} cve CVE-2026-1234                 # who is exposed, and why
              {self.k} sim host reboot {self.dir / "fleet" / "hosts" / "sim-07"}   # then gather, cves, reconcile
              {self.k} reconcile --dry-run
            Start over with `{again}`.
        """).rstrip()
        )
