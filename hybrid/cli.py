"""`hybrid` — the command line entry point.

Each sub-command lives in its own module of this package and is registered here; this module only
wires them together. Exit codes (see `hybrid.common`): 0 ok, 1 the command ran and what it checked
failed, 2 bad arguments or input, 69 Redis unreachable, 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hybrid-ai-stack")
def cli() -> None:
    """Hybrid AI Stack: answer on the edge, burst sealed jobs to GPU workers in-zone.

    Configuration comes from HYB_* environment variables (HYB_REDIS_URL or REDIS_URL, HYB_ZONE,
    HYB_KEYRING, ...) and from a TOML file named by HYB_CONFIG; flags override both.
    """


# One module per command family, each with `register(cli)`. Add a line here for a new family.
COMMAND_MODULES = (
    "hybrid.commands_broker",
    "hybrid.commands_budget",
    "hybrid.commands_deploy",
    "hybrid.commands_edge",
    "hybrid.commands_grade",
    "hybrid.commands_models",
    "hybrid.commands_worker",
    "hybrid.commands_sre",
    "hybrid.demo",
    "hybrid.policy_cli",
    "hybrid.stack.commands",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
