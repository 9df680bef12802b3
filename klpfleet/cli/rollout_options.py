"""Options shared by the commands that start rollouts (`rollout create`, `reconcile`, `rollback`)."""

from __future__ import annotations

from typing import Any

import click

from klpfleet.cli import completion

engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "mitogen", "ansible"]),
    default="auto",
    show_default=True,
    help="What runs the playbooks: Mitogen's strategy (pip install 'klpfleet[fast]'), Ansible's own, or "
    "(auto) Mitogen where it is installed, with Ansible's own as the fallback.",
)


def rollout_policy_options(command: Any) -> Any:
    """The options that make a rollout's policy (waves, budgets, gates, transition handling); `rollout create` and
    `reconcile` share them."""
    for option in reversed(
        [
            click.option(
                "--waves", default="1,10%,50%,100%", show_default=True, help="Wave sizes as Ansible's serial list."
            ),
            click.option(
                "--by",
                metavar="LABEL",
                help="Keep each wave inside one failure domain (e.g. zone).",
                shell_complete=completion.label_keys,
            ),
            click.option("--max-failed", metavar="N|P%", help="Hard failures a wave may have (default 0)."),
            click.option(
                "--max-refused", metavar="N|P%", help="Callback refusals a wave may have (default: no limit)."
            ),
            click.option("--bake", metavar="DURATION", help="Wait between waves (e.g. 10m)."),
            click.option(
                "--health-check", metavar="CMD", help="Command run on each host after it is patched (no shell)."
            ),
            click.option("--on-failure", type=click.Choice(["pause", "rollback"]), default="pause", show_default=True),
            click.option(
                "--on-refusal", type=click.Choice(["pause", "continue"]), default="continue", show_default=True
            ),
            click.option("--retry-refused", default=0, show_default=True, help="Retries of refused hosts."),
            click.option("--retry-delay", metavar="DURATION", help="Delay before retrying refusals (default 60s)."),
            click.option("--forks", default=20, show_default=True, help="Parallel hosts within a wave."),
            click.option("--transition-timeout", metavar="DURATION", help="Per host (default 60s)."),
            click.option(
                "--on-stall", type=click.Choice(["reverse", "wait", "force"]), default="reverse", show_default=True
            ),
            click.option(
                "--allow-force",
                is_flag=True,
                help="Needed with --on-stall force (a forced patch needs a reboot to go).",
            ),
            click.option(
                "--policy",
                metavar="FILE",
                type=click.Path(dir_okay=False),
                help="The whole policy (these options' names, analysis checks) from YAML; options given override it.",
            ),
            click.option("--prometheus", metavar="URL", help="Prometheus the policy's analysis checks query."),
        ]
    ):
        command = option(command)
    return command


def policy_from(ctx: click.Context, options: dict[str, Any]) -> Any:
    """The rollout policy: the defaults, then the --policy file, then the options typed on the command line."""
    from click.core import ParameterSource

    from klpfleet.controller.policy import build_policy
    from klpfleet.controller.policy_file import read_policy_file

    typed = {k: v for k, v in options.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    from_file = read_policy_file(options["policy"]) if options.get("policy") else {}
    return build_policy(**{**options, **from_file, **typed})


def preflight_options(command: Any) -> Any:
    """`--no-preflight` and `--require-replace`: how a plan treats the pre-flight's verdicts."""
    command = click.option(
        "--require-replace",
        is_flag=True,
        help="Leave out hosts where this patch would stack on a loaded non-replace patch's functions.",
    )(command)
    return click.option(
        "--no-preflight",
        "no_preflight",
        is_flag=True,
        help="Plan hosts the pre-flight predicts would refuse (their verdicts are still shown and recorded).",
    )(command)
