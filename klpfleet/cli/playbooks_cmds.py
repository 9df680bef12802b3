"""`klpfleet playbooks`: where the shipped playbooks and the klpfleet.livepatch collection are, so that
`ansible-playbook` can run them from anywhere (a pip install keeps them inside the package)."""

from __future__ import annotations

import shlex
from typing import Any

import click

from klpfleet.cli.output import emit, output_option, table


@click.command("playbooks")
@click.option("--env", "as_env", is_flag=True, help="Print only the shell line to export (for `eval`).")
@output_option
def playbooks(as_env: bool, output: str) -> None:
    """Where klpfleet's playbooks and its Ansible collection are, and the environment that runs them by hand.

    \b
    Examples:
      klpfleet playbooks
      eval "$(klpfleet playbooks --env)"
      ansible-playbook -i inventory.yml "$(klpfleet playbooks -o json | jq -r .data.playbooks)/gather.yml"
    """
    from klpfleet.collection import collections_path, playbooks_path

    books = playbooks_path()
    collections = str(collections_path())
    record: dict[str, Any] = {
        "playbooks": str(books),
        "collections_path": collections,
        "files": sorted(p.name for p in books.glob("*.yml")),
        "env": {
            "ANSIBLE_COLLECTIONS_PATH": collections,
            "ANSIBLE_CALLBACKS_ENABLED": "klpfleet.livepatch.recorder",  # record the runs (with KLPFLEET_DB set)
        },
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in record["env"].items())
    if as_env:
        click.echo(f"export {exports}")
        return

    def show(d: dict[str, Any], out: Any) -> None:
        table(None, ["what", "where"], [["playbooks", d["playbooks"]], ["collections", d["collections_path"]]], out)
        out.print(f'\nexport {exports}   # or: eval "$(klpfleet playbooks --env)"', markup=False, highlight=False)
        out.print(f"ansible-playbook -i INVENTORY {books / 'gather.yml'}", markup=False, highlight=False)

    emit("playbooks", record, output, show)
