"""`klpfleet dashboard`: a real uvicorn server on a loopback port over a simulated fleet; its API says what the CLI
says, actions need a token and the page's CSRF token, and in headless Chromium (Debian's, driven by Playwright)
the page loads without console errors, shows the numbers of `status -o json` and follows a rollout to its end
without a reload."""

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvicorn

from klpfleet.cli.dashboard_cmds import server_options
from klpfleet.dashboard.app import create_app
from klpfleet.db.engine import open_database
from klpfleet.db.models import Event, Patch

from .conftest import run_klpfleet
from .controllerhelpers import fleet_db

pytestmark = pytest.mark.ansible
TOKEN = "test-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("KLPFLEET_SCREENSHOTS")  # where the browser test saves its screenshots (docs/img)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db, **options):
        self.port = free_port()
        config = uvicorn.Config(create_app(db, **options), host="127.0.0.1", port=self.port, **server_options(None))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def get(self, path, headers=None):
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, headers=None):
        req = urllib.request.Request(self.url + path, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    fleet_db(
        tmp_path, url, hosts=6, faults={"sim-03": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "EBUSY"}}}
    )
    ko = tmp_path / "fix.ko"
    from klpfleet.sim.spec import normalize, write_ko

    write_ko(normalize({"name": "livepatch_cve_2026_1234", "objects": [{"name": "vmlinux", "funcs": ["f"]}]}), ko)
    assert run_klpfleet("--db", url, "patch", "add", str(ko), "--cve", "CVE-2026-1234").returncode == 0
    policy = tmp_path / "rollout.yml"  # each wave gated on its transition times: the page shows the analysis
    policy.write_text("analysis: [{name: transition-p95, transition: p95, condition: '< 30'}]\n")
    created = run_klpfleet(
        "--db",
        url,
        "rollout",
        "create",
        "livepatch_cve_2026_1234",
        "--waves",
        "2,100%",
        "--policy",
        str(policy),
        "-o",
        "json",
    )
    assert created.returncode == 0, created.stderr
    return url, json.loads(created.stdout)["data"]["id"], open_database(url)


def test_the_api_says_what_the_cli_says(fleet):
    url, rid, db = fleet
    with Server(db) as server:
        status = server.get("/api/status")
        cli = json.loads(run_klpfleet("--db", url, "status", "-o", "json").stdout)["data"]
        assert status["hosts"] == cli["hosts"] and status["patches"] == cli["patches"] and status["cves"] == cli["cves"]
        rollout = server.get(f"/api/rollouts/{rid}")
        assert (rollout["status"], [len(w["hosts"]) for w in rollout["waves"]]) == ("planned", [2, 4])
        assert server.get("/api/hosts/sim-01")["name"] == "sim-01"
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            assert b"klpfleet_hosts 6.0" in r.read()
        assert server.post(f"/api/rollouts/{rid}/pause")[0] == 403  # read-only

        vex = server.get("/api/vex/openvex")  # the scanners' document, as `klpfleet cves -o openvex` writes it
        cli_vex = json.loads(run_klpfleet("--db", url, "cves", "-o", "openvex").stdout)
        assert [(x["products"], x["status"]) for x in vex["statements"]] == [
            (x["products"], x["status"]) for x in cli_vex["statements"]
        ]
        one = server.get("/api/vex/cyclonedx?host=sim-02")
        assert [c["name"] for c in one["components"][0]["components"]] == ["sim-02"] and one["bomFormat"] == "CycloneDX"
        for bad, code in (("/api/vex/csaf", 404), ("/api/vex/openvex?host=%1b%5b2J", 400)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                server.get(bad)
            assert refused.value.code == code
        blocking = run_klpfleet("--db", url, "patch", "block", "livepatch_cve_2026_1234", "--reason", "INC-9")
        assert blocking.returncode == 0, blocking.stderr
        blocked = server.get("/api/status")["blocked_patches"]
        assert [(b["patch"], b["reason"]) for b in blocked] == [("livepatch_cve_2026_1234", "INC-9")]


def test_actions_need_the_token_and_the_csrf_token_and_name_who(fleet):
    _, rid, db = fleet
    with Server(db, token=TOKEN, allow_actions=True) as server:
        with urllib.request.urlopen(server.url + "/", timeout=10) as r:
            page = r.read().decode()
        csrf = json.loads(page.split('data-config="', 1)[1].split('"', 1)[0].replace("&quot;", '"'))["csrf"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert server.post(f"/api/rollouts/{rid}/pause")[0] == 401
        assert server.post(f"/api/rollouts/{rid}/pause", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert server.post(f"/api/rollouts/{rid}/pause", auth)[0] == 403  # no CSRF token
        foreign = {**auth, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        assert server.post(f"/api/rollouts/{rid}/pause", foreign)[0] == 403
        assert server.get(f"/api/rollouts/{rid}")["status"] == "planned"  # nothing refused changed anything
        # A forwarded header from a client is not believed (no proxy was named): the event names the real client.
        code, body = server.post(
            f"/api/rollouts/{rid}/pause", {**auth, "X-CSRF-Token": csrf, "X-Forwarded-For": "6.6.6.6"}
        )
        assert (code, body["status"]) == (200, "paused")
        code, body = server.post(f"/api/rollouts/{rid}/pause", {**auth, "X-CSRF-Token": csrf})
        assert code == 409 and "paused" in body["error"]  # the controller's own rules
    with db.session() as s:
        event = s.query(Event).filter(Event.kind == "rollout.pause_requested").one()
        assert event.actor.startswith("dashboard:token-") and event.actor.endswith("@127.0.0.1")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "0.0.0.0:18099"], {}, "not a loopback address"),
        (["--allow-actions"], {}, "--allow-actions needs a token"),
        (["--allow-actions"], {"KLPFLEET_DASHBOARD_TOKEN": "short"}, "at least 16 characters"),
        (["--listen", "nowhere"], {}, "expected ADDRESS:PORT"),
    ],
)
def test_unsafe_or_bad_starts_are_refused(tmp_path, args, env, message):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    assert run_klpfleet("--db", url, "db", "upgrade").returncode == 0
    proc = run_klpfleet("--db", url, "dashboard", *args, env={"KLPFLEET_DASHBOARD_TOKEN": "", **env}, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_in_a_real_browser_follows_a_rollout_without_reload(fleet):
    from playwright.sync_api import expect, sync_playwright

    url, rid, db = fleet
    with Server(db, token=TOKEN, allow_actions=True) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        # With a token configured, nothing of the fleet is shown until the token is given once.
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#hosts-total")).to_have_text("\u2013")  # the empty card
        page.fill("#login-token", "wrong-token-0123456789")
        page.locator("#login button").click()
        expect(page.locator("#login-result")).to_have_text("wrong token")
        page.fill("#login-token", TOKEN)
        page.locator("#login button").click()
        expect(page.locator("#live")).to_have_text("live")
        status = json.loads(run_klpfleet("--db", url, "status", "-o", "json").stdout)["data"]
        expect(page.locator("#hosts-total")).to_have_text(str(status["hosts"]["total"]))
        expect(page.locator("#attention-total")).to_have_text(str(status["attention"]["total"]))
        (cve,) = status["cves"]
        expect(page.locator("#cves tbody tr").first).to_contain_text(f"CVE-2026-1234{cve['covered']}{cve['exposed']}")
        page.locator("#rollouts tbody a", has_text=f"#{rid}").click()
        expect(page.locator("#rollout-status")).to_have_text("planned")
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "dashboard-fleet.png"), full_page=True)

        # An action without the token is refused on the page; the rollout is untouched.
        page.locator("#actions button[data-action=pause]").click()
        expect(page.locator("#action-result")).to_contain_text("pause refused: a valid token is needed")
        assert server.get(f"/api/rollouts/{rid}")["status"] == "planned"

        # With the token, actions work from the page: pause the planned rollout, then resume it, which starts a
        # driver in the background; the page follows the rollout to its end without a reload.
        page.evaluate("window.klpfleetMarker = 1")
        page.fill("#token", TOKEN)
        page.locator("#actions button[data-action=pause]").click()
        expect(page.locator("#action-result")).to_have_text("pause: paused")
        expect(page.locator("#rollout-status")).to_have_text("paused")
        page.locator("#actions button[data-action=resume]").click()
        expect(page.locator("#action-result")).to_have_text("resume: running")
        expect(page.locator("#rollout-status")).to_have_text("completed", timeout=120_000)
        expect(page.locator("#rollouts tbody tr").first).to_contain_text("completed")  # the list agrees
        expect(page.locator("#waves tbody tr").first).to_contain_text("passed")  # its analysis, and its checks:
        expect(page.locator("#analysis tbody tr").first).to_contain_text("transition-p95")
        expect(page.locator("#analysis tbody tr").first).to_contain_text("passed")
        assert page.evaluate("window.klpfleetMarker") == 1  # the same page: never reloaded
        expect(page.locator("#problems tbody")).to_contain_text("sim-03")  # the refusal, with its host
        expect(page.locator("#events tbody")).to_contain_text("rollout.completed")
        expect(page.locator("#events tbody")).to_contain_text("dashboard:token-")  # who paused and resumed
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / "dashboard-rollout.png"), full_page=True)
        page.locator("#problems tbody a", has_text="sim-03").click()  # the refusing host: the kernel's own words
        expect(page.locator("#host-kernel-log")).to_contain_text("pre-patch callback failed for object 'vmlinux'")
        browser.close()
    # The refused action is the only failed request (Chromium logs it as an error); nothing else.
    refused = [e for e in errors if "status of 401" in e]
    # The wrong token at the login and the action without a token; nothing else.
    assert len(refused) == 2 and [e for e in errors if e not in refused] == []
    with db.session() as s:
        assert s.query(Patch).count() == 1


def alert_body(status, labels):
    """Alertmanager's webhook (version 4), as its documentation gives it."""
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "errors up"},
        "startsAt": "2026-12-07T00:00:00Z",
    }
    return json.dumps({"version": "4", "status": status, "receiver": "klpfleet", "alerts": [alert]}).encode()


def test_a_firing_alert_pauses_the_rollout_it_names(fleet):
    url, rid, db = fleet
    assert run_klpfleet("--db", url, "rollout", "delete", str(rid)).returncode == 0
    created = run_klpfleet(
        "--db", url, "rollout", "create", "livepatch_cve_2026_1234", "--waves", "2,100%", "--bake", "10m", "-o", "json"
    )
    rid = json.loads(created.stdout)["data"]["id"]
    assert run_klpfleet("--db", url, "rollout", "start", str(rid)).returncode == 0  # a driver of its own
    deadline = time.monotonic() + 120
    with db.session() as s:
        while not s.query(Event).filter(Event.rollout_id == rid, Event.kind == "wave.bake_started").count():
            assert time.monotonic() < deadline, "the first wave never reached its bake"
            time.sleep(0.5)
            s.expire_all()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def post(server, body, headers=auth):
        req = urllib.request.Request(server.url + "/api/alertmanager", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with Server(db, token=TOKEN, allow_actions=True) as server:
        named = {"alertname": "HighErrorRate", "klpfleet_rollout": str(rid), "severity": "page"}
        assert post(server, alert_body("firing", named), {})[0] == 401
        assert post(server, alert_body("firing", named), {**auth, "Origin": server.url})[0] == 403
        assert post(server, b"{not json", auth)[0] == 400
        assert post(server, alert_body("firing", {**named, "klpfleet_rollout": "1; drop"}))[0] == 400
        assert post(server, alert_body("resolved", named)) == (200, {"acted": []})
        assert post(server, alert_body("firing", {"alertname": "Unrelated"})) == (200, {"acted": []})
        assert server.get(f"/api/rollouts/{rid}")["status"] == "running"  # nothing above stopped it
        code, body = post(server, alert_body("firing", named))
        assert code == 200 and body["acted"] == [
            {"rollout": rid, "action": "pause", "alertname": "HighErrorRate", "result": "paused"}
        ]
        record = server.get(f"/api/rollouts/{rid}")
        assert record["status"] == "paused" and record["pause_reason"] == "alert HighErrorRate firing"
        again = post(server, alert_body("firing", named))[1]["acted"][0]["result"]
        assert again == "left paused"  # a repeated notification changes nothing
    with db.session() as s:
        event = s.query(Event).filter(Event.rollout_id == rid, Event.kind == "rollout.alert").one()
        assert event.details["alert"]["severity"] == "page" and event.actor.startswith("alertmanager:token-")
