"""Hostile input at the dashboard (tokens, Host headers, ids, event streams) and in inventories (credentials in kept
values, sources whose change an import must not skip)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from klpfleet.db.models import Event, Host
from klpfleet.hoststate.recorder import Recorder

PATCH = "livepatch_cve_2026_1234"


# ------------------------------------------------------------------ D1, D2: the dashboard


def _http(server, path: str, *, method: str = "GET", headers: dict[str, str] | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_a_dashboard_with_a_token_serves_no_data_without_it(sqlite_db):
    from .test_dashboard import TOKEN, Server

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with Server(sqlite_db, token=TOKEN) as server:
        for path in ("/api/status", "/api/rollouts", "/api/rollouts/1", "/api/hosts/web1", "/api/events", "/metrics"):
            status, headers, _ = _http(server, path)
            assert status == 401 and headers.get("www-authenticate") == "Bearer", path
            assert _http(server, path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401, path
        assert _http(server, "/api/status", headers=bearer)[0] == 200
        assert _http(server, "/metrics", headers=bearer)[0] == 200
        status, _, page = _http(server, "/")  # the shell: no data in it
        assert status == 200 and b"sim-" not in page and _http(server, "/static/app.js")[0] == 200
        # The page's session: the token shown once gives an HttpOnly, SameSite=Strict cookie (EventSource sends no
        # headers); a made-up cookie gives nothing.
        assert _http(server, "/api/session", method="POST")[0] == 401
        status, headers, _ = _http(server, "/api/session", method="POST", headers=bearer)
        cookie = headers["set-cookie"]
        assert status == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie
        session = cookie.split(";", 1)[0]
        assert _http(server, "/api/status", headers={"Cookie": session})[0] == 200
        assert _http(server, "/api/status", headers={"Cookie": "klpfleet_session=" + "0" * 64})[0] == 401


def test_the_dashboard_answers_only_the_names_it_is_reached_by(sqlite_db):
    """DNS rebinding: a page on another site resolves its own name to 127.0.0.1 and reads the loopback dashboard;
    the Host header gives it away."""
    from .test_dashboard import Server

    with Server(sqlite_db, allowed_hosts=["klpfleet.example.com"]) as server:
        assert _http(server, "/api/status", headers={"Host": "rebind.attacker.example:8080"})[0] == 421
        assert _http(server, "/", headers={"Host": "rebind.attacker.example"})[0] == 421
        for name in (f"127.0.0.1:{server.port}", "localhost", "[::1]:8080", "klpfleet.example.com:443"):
            assert _http(server, "/api/status", headers={"Host": name})[0] == 200, name


def test_dashboard_ids_and_names_are_range_checked(sqlite_db):
    from .test_dashboard import TOKEN, Server

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with Server(sqlite_db, token=TOKEN, allow_actions=True) as server:
        for path in ("/api/rollouts/99999999999999999999", "/api/rollouts/0", "/api/hosts/a%0Ab", "/api/hosts/%3Bid"):
            assert _http(server, path, headers=bearer)[0] == 404, path
        huge = "/api/rollouts/99999999999999999999/pause"
        assert _http(server, huge, method="POST", headers={**bearer, "X-CSRF-Token": "x"})[0] in (403, 404)


def test_dashboard_event_streams_are_capped(sqlite_db):
    import http.client

    from klpfleet.dashboard.app import MAX_STREAMS

    from .test_dashboard import Server

    with Server(sqlite_db) as server:
        opened = []
        for _ in range(MAX_STREAMS):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/api/events")
            assert conn.getresponse().status == 200
            opened.append(conn)
        assert _http(server, "/api/events")[0] == 503
        assert _http(server, "/api/status")[0] == 200  # the rest of the dashboard still answers
        for conn in opened:
            conn.close()
        deadline = time.monotonic() + 30
        while _http(server, "/api/status")[0] == 200:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/api/events")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                break  # closed streams were counted out
            assert time.monotonic() < deadline, "closed event streams were never counted out"
            time.sleep(0.5)


# ------------------------------------------------------------------ F10: credentials in kept vars


@pytest.mark.parametrize(
    "line",
    [
        'web9 klp_patch_params=\'{"db_password": "pw-4411"}\'',
        'web9 klp_patch_params=\'{"opts": [{"nested": {"api_token": "pw-4412"}}]}\'',
        "web9 ansible_ssh_common_args='-o ProxyCommand=\"connect --password pw-4413 jump\"'",
        "web9 ansible_ssh_extra_args='-o ProxyCommand=\"curl https://user:pw-4414@proxy/\"'",
        "web9 ansible_ssh_common_args='-o SetEnv=\"Authorization: Bearer pw-4415\"'",
        "web9 ansible_ssh_common_args='-o SetEnv=AWS_SECRET_ACCESS_KEY=pw-4416'",
        'web9 klp_patch_params=\'{"mode": "token: pw-4417"}\'',
    ],
)
def test_credentials_anywhere_in_a_kept_value_refuse_the_import(tmp_path, cli, sqlite_db, sqlite_url, line):
    """Each string and each key of a kept value, at any depth: never stored, never in an event, one line naming
    where it was, never the value."""
    path = tmp_path / "hosts.ini"
    path.write_text(line + "\n")
    result = cli("--db", sqlite_url, "inventory", "import", "-i", path)
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and "credential" in result.err
    assert "pw-44" not in result.err
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count(Host.id))) == 0
        assert not any("pw-44" in json.dumps(e.details) for e in s.scalars(select(Event)))


def test_ordinary_ssh_arguments_are_not_taken_for_credentials(tmp_path, cli, sqlite_db, sqlite_url):
    path = tmp_path / "hosts.ini"
    path.write_text(
        "web1 ansible_ssh_common_args='-o PasswordAuthentication=no -o ProxyJump=admin@bastion -o "
        "IdentitiesOnly=yes' klp_patch_params='{\"timeout\": 5}'\n"
    )
    assert cli("--db", sqlite_url, "inventory", "import", "-i", path).code == 0


# ------------------------------------------------------------------ FP1-FP4: stale import skips


def _import(cli, url, source, *args):
    result = cli("--db", url, "inventory", "import", "-i", source, *args, "-o", "json")
    assert result.code == 0, result.err
    return result.json()["data"]


def test_a_symlinked_group_vars_directory_is_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    real = tmp_path / "shared_vars"
    real.mkdir()
    (real / "web.yml").write_text("klp_on_stall: wait\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "hosts.ini").write_text("[web]\nweb1\n")
    (site / "group_vars").symlink_to(real)
    assert _import(cli, sqlite_url, site / "hosts.ini")["added"] == 1
    (real / "web.yml").write_text("klp_on_stall: reverse\n")
    again = _import(cli, sqlite_url, site / "hosts.ini")
    assert not again["skipped"] and again["updated"] == 1


def test_a_directory_source_with_a_symlinked_subdirectory_is_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "more.ini").write_text("[db]\ndb1\n")
    site = tmp_path / "inv"
    site.mkdir()
    (site / "hosts.ini").write_text("[web]\nweb1\n")
    (site / "linked").symlink_to(elsewhere)
    _import(cli, sqlite_url, site)
    (elsewhere / "more.ini").write_text("[db]\ndb1\ndb2\n")
    again = _import(cli, sqlite_url, site)
    assert not again["skipped"] and again["added"] == 1


@pytest.mark.parametrize("spelling", ['"plugin": constructed', "'plugin': constructed", '{"plugin": "constructed"}'])
def test_a_plugin_config_however_spelled_is_never_skipped(tmp_path, spelling):
    """An inventory plugin's config asks a cloud API: the same bytes can mean other hosts, so it is always read."""
    from klpfleet.inventory.fingerprint import fingerprint

    static = tmp_path / "hosts.yml"
    static.write_text("all:\n  hosts:\n    web1:\n")
    assert fingerprint([str(static)], {}) is not None

    config = tmp_path / "inv.constructed.yml"
    config.write_text(spelling + "\n")
    assert fingerprint([str(config)], {}) is None


def test_hosts_the_recorder_discovered_since_an_import_make_it_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    source = tmp_path / "hosts.ini"
    source.write_text("[web]\nweb1\n")
    _import(cli, sqlite_url, source, "--prune")
    Recorder(sqlite_db).record_task_result(None, "handrun1", "klpfleet.livepatch.patch_info", "ok", {})
    again = _import(cli, sqlite_url, source, "--prune")
    assert not again["skipped"] and again["removed"] == 1  # Ansible would not list handrun1: --prune removes it
