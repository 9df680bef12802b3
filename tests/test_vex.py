"""VEX for scanners: `klpfleet cves -o openvex|cyclonedx` on random fleets is valid against OpenVEX's published
schema and CycloneDX's (and parsed back by cyclonedx-python-lib), and says exactly what `klpfleet cve CVE -o json`
says at the same moment; a real rollout's statements carry the patch and since when it runs; the kernel package
is a purl a scanner matches."""

import hashlib
import json
import tempfile
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from klpfleet.db.models import Event
from klpfleet.reads.kernel_purl import kernel_purl
from klpfleet.states import PatchState

from .test_exposure import NEW, OLD, OTHER, fleet

SCHEMA = Path(__file__).parent / "schemas" / "openvex_json_schema_0.2.0.json"
SCHEMA_SHA256 = "9373597734ed1d3ea5161a8b46d3866c4a8cfe76fd632fdd16aef01fb34b3238"
PATCHES = [
    ("a_old", OLD, ["CVE-2026-0001"]),
    ("a_new", NEW, ["CVE-2026-0001", "CVE-2026-0002"]),
    ("b_old", OLD, ["CVE-2026-0002"]),
    ("b_old_rebuilt", OLD, ["CVE-2026-0002"]),
]
EXPOSURE_OF = {"fixed": "covered", "affected": "exposed", "under_investigation": "unknown"}
CDX_STATE = {"resolved": "covered", "exploitable": "exposed", "in_triage": "unknown"}


@pytest.fixture(scope="module")
def openvex_validator():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256  # the published file, unmodified
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def openvex_sets(doc):
    found = set()
    for s in doc["statements"]:
        (product,) = s["products"]
        host = product["@id"].removeprefix("urn:klpfleet:host:")
        found.add((s["vulnerability"]["name"], host, EXPOSURE_OF[s["status"]]))
    return found


def cyclonedx_sets(text):
    from cyclonedx.model.bom import Bom
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = Bom.from_json(json.loads(text))  # parsed back by the library
    (fleet,) = bom.components  # the fleet, holding its hosts, each holding its kernel
    hosts = {str(c.bom_ref): c.name for c in fleet.components}
    assert all([k.type.value for k in c.components] == ["operating-system"] for c in fleet.components)
    found = set()
    for v in bom.vulnerabilities:
        for target in v.affects:
            entry = (v.id, hosts[target.ref.removesuffix("/kernel")], CDX_STATE[v.analysis.state.value])
            assert entry not in found  # each host has one word on each CVE
            found.add(entry)
    return found


def cve_json_sets(cli, url, cves):
    found = set()
    for cve in cves:
        result = cli("--db", url, "cve", cve, "--all", "-o", "json")
        assert result.code in (0, 1, 2), result.err
        for kind, hosts in result.json()["data"]["hosts"].items():
            found |= {(cve, h["host"], kind) for h in hosts}
    return found


fleets = st.fixed_dictionaries(
    {
        "hosts": st.lists(
            st.tuples(st.sampled_from([OLD, NEW, OTHER, None]), st.sampled_from([True, False, None])),
            min_size=1,
            max_size=25,
        ),
        "states": st.lists(st.sampled_from([None, *[s.value for s in PatchState]]), min_size=100, max_size=100),
        "fixed": st.sampled_from([[], [("CVE-2026-0001", OTHER)], [("CVE-2026-0003", NEW)]]),
        "blocked": st.sets(st.sampled_from([p[0] for p in PATCHES]), max_size=2),
    }
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=fleets)
def test_vex_documents_are_valid_and_say_what_cve_json_says(cli, openvex_validator, spec):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/k.db"
        hosts = [(f"h{i:02d}", release, reach) for i, (release, reach) in enumerate(spec["hosts"])]
        states = iter(spec["states"])
        rows = [(h, p[0], s) for h, _, _ in hosts for p in PATCHES if (s := next(states, None)) is not None]
        db = fleet(url, hosts, PATCHES, rows, spec["fixed"])
        if spec["blocked"]:
            for name in sorted(spec["blocked"]):
                assert cli("--db", url, "patch", "block", name, "--reason", "bad build").code == 0
        db.engine.dispose()
        cves = sorted({c for p in PATCHES for c in p[2]} | {c for c, _ in spec["fixed"]})

        openvex = cli("--db", url, "cves", "-o", "openvex")
        assert openvex.code == 0, openvex.err
        doc = json.loads(openvex.out)
        errors = sorted(openvex_validator.iter_errors(doc), key=str)
        assert not errors, errors[0]
        cyclonedx = cli("--db", url, "cves", "-o", "cyclonedx")
        assert cyclonedx.code == 0, cyclonedx.err

        expected = cve_json_sets(cli, url, cves)
        assert openvex_sets(doc) == expected
        assert cyclonedx_sets(cyclonedx.out) == expected
        for s in doc["statements"]:
            if s["status"] == "affected":
                assert s["action_statement"]
                if s["status_notes"].endswith(": blocked"):
                    assert "patch block" in s["action_statement"]


def test_a_rollout_makes_statements_fixed_with_the_patch_and_since_when(cli, tmp_path, monkeypatch):
    from .controllerhelpers import fleet_db, register

    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=3)
    patch = register(db, tmp_path, "livepatch_cve_2026_1234")
    assert cli("--db", url, "patch", "cve", "add", patch.name, "CVE-2026-1234").code == 0
    created = cli("--db", url, "rollout", "create", patch.name, "--hosts", "sim-01:sim-02", "-o", "json")
    assert cli("--db", url, "rollout", "start", str(created.json()["data"]["id"]), "--wait").code == 0

    doc = json.loads(cli("--db", url, "cves", "-o", "openvex", "--author", "secops@example.com").out)
    assert doc["author"] == "secops@example.com"
    by_host = {s["products"][0]["@id"]: s for s in doc["statements"]}
    assert sorted(by_host) == [f"urn:klpfleet:host:sim-0{i}" for i in (1, 2, 3)]
    with db.session() as s:
        applied_at = {
            e.host_name: e.at
            for e in s.scalars(select(Event).where(Event.kind == "patch.state").order_by(Event.id))
            if e.details.get("to") == "applied"
        }
    fixed = by_host["urn:klpfleet:host:sim-01"]
    assert fixed["status"] == "fixed" and patch.sha256 in fixed["status_notes"]
    assert fixed["timestamp"] == applied_at["sim-01"].isoformat().replace("+00:00", "Z")
    assert fixed["products"][0]["subcomponents"] == [{"@id": "pkg:deb/debian/linux-image-6.1.0-56-amd64?arch=amd64"}]
    pending = by_host["urn:klpfleet:host:sim-03"]
    assert pending["status"] == "affected" and pending["status_notes"].endswith(": pending")
    assert "rollout create" in pending["action_statement"]

    one = json.loads(cli("--db", url, "cves", "-o", "openvex", "--hosts", "sim-03").out)
    assert [s["products"][0]["@id"] for s in one["statements"]] == ["urn:klpfleet:host:sim-03"]
    counted = cli("--db", url, "cves", "--hosts", "sim-01:sim-02", "-o", "json")
    assert counted.code == 0 and counted.json()["data"][0]["counts"] == {"covered": 2, "exposed": 0, "unknown": 0}

    assert cli("--db", url, "patch", "block", patch.name, "--reason", "INC-1").code == 0
    doc = json.loads(cli("--db", url, "cves", "-o", "openvex", "--hosts", "sim-03").out)
    assert doc["statements"][0]["status_notes"].endswith(": blocked")  # nothing will load it there now
    listed = cli("--db", url, "cves")
    assert "livepatch_cve_2026_1234 (blocked)" in listed.out


def test_no_cve_no_document(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    fleet(url, [("h1", OLD, True)], [("a_old", OLD, [])], [])
    for fmt in ("openvex", "cyclonedx"):
        result = cli("--db", url, "cves", "-o", fmt)
        assert result.code == 1 and "no registered patch names a CVE" in result.err and result.out == ""


@pytest.mark.parametrize(
    ("release", "purl"),
    [
        ("6.1.0-56-amd64", "pkg:deb/debian/linux-image-6.1.0-56-amd64?arch=amd64"),
        ("6.12.48+deb13-amd64", "pkg:deb/debian/linux-image-6.12.48%2Bdeb13-amd64?arch=amd64"),
        ("5.10.0-35-cloud-arm64", "pkg:deb/debian/linux-image-5.10.0-35-cloud-arm64?arch=arm64"),
        ("5.15.0-91-generic", "pkg:deb/ubuntu/linux-image-5.15.0-91-generic"),
        ("6.8.0-1019-aws", "pkg:deb/ubuntu/linux-image-6.8.0-1019-aws"),
        ("5.14.0-427.13.1.el9_4.x86_64", "pkg:rpm/redhat/kernel@5.14.0-427.13.1.el9_4?arch=x86_64"),
        ("6.11.4-301.fc41.x86_64", "pkg:rpm/fedora/kernel@6.11.4-301.fc41?arch=x86_64"),
        ("5.14.21-150500.55.39-default", "pkg:rpm/suse/kernel-default@5.14.21-150500.55.39"),
        ("6.6.0-custom", "pkg:generic/linux@6.6.0-custom"),
    ],
)
def test_the_kernel_package_is_named_as_its_distribution_names_it(release, purl):
    assert kernel_purl(release) == purl
