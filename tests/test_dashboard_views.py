"""The dashboard as an operator reads it, in headless Chromium (Debian's, driven by Playwright): a read-only page
shows no controls, every view has an address that survives a reload and a paste, bars and cells are coloured by
outcome, running and paused look different, event details are readable with the kernel log folded (the page never
grows wider than the window), and a host shows the tasks that stalled its transition."""

import json

import pytest

from .conftest import run_klpfleet
from .controllerhelpers import fleet_db, register
from .test_dashboard import CHROMIUM, Server

pytestmark = [
    pytest.mark.ansible,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]
PATCH = "livepatch_cve_2026_1234"
PATCH_CVE = "CVE-2026-1234"
FAULTS = {
    "sim-03": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-05": {"stall": {"function": "*", "seconds": "forever"}},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed rollout over 6 hosts: 4 applied, one refusal and one stall (in wave 2)."""
    tmp = tmp_path_factory.mktemp("views")
    url = f"sqlite:///{tmp / 'k.db'}"
    db = fleet_db(tmp, url, hosts=6, faults=FAULTS)
    register(db, tmp)
    assert run_klpfleet("--db", url, "patch", "cve", "add", PATCH, PATCH_CVE).returncode == 0
    env = {"KLPFLEET_RUN_DIR": str(tmp / "runs")}
    args = ["rollout", "create", PATCH, "--waves", "1,100%", "--max-failed", "1", "--transition-timeout", "2s"]
    created = run_klpfleet("--db", url, *args, "-o", "json", env=env)
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["data"]["id"]
    assert run_klpfleet("--db", url, "rollout", "start", str(rid), "--wait", env=env).returncode == 0
    return db, rid


def open_page(p, server, address=""):
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + address)
    return browser, page, errors


def test_read_only_addresses_colours_details_and_stalled_tasks(finished):
    from playwright.sync_api import expect, sync_playwright

    db, rid = finished
    with Server(db) as server, sync_playwright() as p:  # no token, no actions: a read-only page
        browser, page, errors = open_page(p, server)
        expect(page.locator("#live")).to_have_text("live")
        # Exposure over time: a line per CVE drawn from the audit trail, ending where `cves` is now.
        history = server.get("/api/cves/history")[PATCH_CVE]
        chart = page.locator("#cves svg.chart").first
        expect(chart.locator("polyline.line-covered")).to_have_count(1)
        assert chart.get_attribute("data-covered") == ",".join(str(p["covered"]) for p in history)
        assert history[-1]["covered"] == 4 and history[-1]["exposed"] == 2 and history[0]["covered"] < 4
        page.locator("#rollouts tbody a", has_text=f"#{rid}").click()
        expect(page).to_have_url(f"{server.url}/#/rollouts/{rid}")
        expect(page.locator("#rollout-status")).to_have_text("completed")
        expect(page.locator("#actions")).to_be_hidden()  # no token box, no buttons
        expect(page.locator("#token")).to_be_hidden()

        page.reload()  # the address survives a reload
        expect(page.locator("#rollout-status")).to_have_text("completed")
        second = page.locator("#waves tbody tr").nth(1)
        refused, stalled = second.locator(".seg-refused"), second.locator(".seg-stalled")
        expect(refused).to_have_count(1)
        expect(stalled).to_have_count(1)
        colours = {
            name: page.locator(f"#waves tbody tr >> nth=1 >> .seg-{name}").evaluate(
                "n => getComputedStyle(n).backgroundColor"
            )
            for name in ("applied", "refused", "stalled")
        }
        assert len(set(colours.values())) == 3, colours  # a wave with a refusal and a stall is not all green
        expect(page.locator("#grid .cell")).to_have_count(6)
        stalled_row = page.locator("#problems tbody tr", has_text="sim-05")
        expect(stalled_row).to_contain_text("app_worker")  # the task that held the transition, on the rollout
        expect(stalled_row).to_contain_text("patched_function")
        expect(page.locator("#grid .cell[data-state=applied]")).to_have_count(4)
        badge = page.evaluate(
            """() => ["running", "paused", "completed", "failed"].map((s) => {
                const n = document.createElement("span"); n.className = `badge ${s}`; document.body.append(n);
                const c = getComputedStyle(n).backgroundColor; n.remove(); return c; })"""
        )
        assert len(set(badge)) == 4, badge  # running, paused, completed and failed each look their own

        page.locator("#grid .cell[data-state=stalled]").click()
        expect(page).to_have_url(f"{server.url}/#/hosts/sim-05")
        expect(page.locator("#host-title")).to_contain_text("sim-05")
        expect(page.locator("#host-stalled tbody")).to_contain_text("patched_function")
        fold = page.locator("#host-events details summary", has_text="kernel_log (").first
        expect(fold).to_be_visible()
        assert "{" not in page.locator("#host-events tbody tr").first.inner_text().split("kernel_log")[0][:5]
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width  # nothing pushes the page wider than the window
        browser.close()

        browser, pasted, more = open_page(p, server, "/#/hosts/sim-03")  # an address pasted into a new window
        expect(pasted.locator("#host-title")).to_contain_text("sim-03")
        expect(pasted.locator("#host-kernel-log")).to_contain_text("pre-patch callback failed for object 'vmlinux'")
        pasted.goto(f"{server.url}/#/rollouts/{rid}/waves/2")  # a wave's address: its row and its cells marked
        expect(pasted.locator("#waves tbody tr.selected")).to_have_count(1)
        expect(pasted.locator("#waves tbody tr.selected")).to_contain_text("refused 1")
        expect(pasted.locator("#grid .wave.selected .cell")).to_have_count(5)
        pasted.locator("#cves tbody a", has_text=PATCH_CVE).click()  # a CVE's address: who is exposed, and why
        expect(pasted).to_have_url(f"{server.url}/#/cves/{PATCH_CVE}")
        expect(pasted.locator("#cve-title")).to_have_text(f"{PATCH_CVE}: 4 covered, 2 exposed, 0 unknown")
        expect(pasted.locator("#cve-hosts tbody tr", has_text="sim-05")).to_contain_text("stalled")
        pasted.goto(f"{server.url}/#/hosts/sim-01")  # the function map: what the host's sysfs listed at the load
        functions = pasted.locator("#host-functions tbody tr")
        expect(functions).to_have_count(1)
        expect(functions).to_contain_text("tcp_send_challenge_ack,1")
        expect(functions).to_contain_text(PATCH)
        browser.close()
        assert errors == [] and more == []
