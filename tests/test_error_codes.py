"""One table of klp_error codes (module_utils/_livepatch.KLP_ERRORS): the modules' documentation, the README,
the operators' guide and the collection's README name exactly those codes."""

import re
from pathlib import Path

import yaml

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import KLP_ERRORS
from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module

ROOT = Path(__file__).resolve().parents[1]
CODES = set(KLP_ERRORS)


def table_codes(text: str, heading: str) -> set[str]:
    """The codes in the first column of the markdown table that follows `heading`."""
    block = text[text.index(heading) :].split("\n\n")
    rows = block[0] if heading.startswith("|") else block[1]
    codes = set()
    for line in rows.splitlines()[2:]:
        codes |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return codes


def test_the_module_documents_exactly_the_codes():
    returned = yaml.safe_load(patch_module.RETURN)["klp_error"]
    assert set(returned["choices"]) == CODES
    described = "\n".join(returned["description"])
    assert all(f"V({code})" in described for code in CODES)


def test_the_readme_and_the_guides_name_exactly_the_codes():
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Failure classes (`klp_error`)") :].split("\n\n")[0]
    assert set(re.findall(r"`([a-z_]+)`", paragraph)) - {"klp_error", "ko"} == CODES
    operators = (ROOT / "docs" / "operators.md").read_text()
    assert table_codes(operators, "| `klp_error` | what happened | what to do |") == CODES
    collection = (ROOT / "collections/ansible_collections/klpfleet/livepatch/README.md").read_text()
    assert table_codes(collection, "`klp_error` values") == CODES


def test_every_code_the_host_code_raises_is_in_the_table():
    host_code = ROOT / "collections/ansible_collections/klpfleet/livepatch/plugins"
    raised = set()
    for path in host_code.rglob("*.py"):
        text = path.read_text()
        raised |= set(re.findall(r'LivepatchError\(\s*"([a-z_]+)"', text))
        raised |= set(re.findall(r'klp_error="([a-z_]+)"', text))
        raised |= set(re.findall(r'"busy" if .* else "([a-z_]+)"', text))
    assert raised and raised <= CODES, raised - CODES


def test_the_nodes_guide_names_exactly_the_node_failures():
    from klpfleet.nodes.stream import NODE_FAILURES

    guide = (ROOT / "docs" / "nodes.md").read_text()
    assert table_codes(guide, "| failure | what happened | the node's hosts |") == set(NODE_FAILURES)
