"""`hybrid budget status|set|force`: spend, budgets and the cost breakers of a zone."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from broker.breaker import State
from broker.ledger import WINDOWS, CostBreaker, Ledger, ScopeStatus
from hybrid.common import friendly_errors, redis_for, settings_from, settings_options

console = Console()


def register(cli: click.Group) -> None:
    cli.add_command(budget)


@click.group()
def budget() -> None:
    """Spend, budgets and cost breakers of a zone.

    Workers record GPU-seconds times the price of their instance class in per-minute buckets; budgets
    (USD per rolling hour or day) apply to `global` or to `tenant:<name>`. When one is spent its
    breaker opens and cloud-bound jobs are refused with BudgetExceeded (local inference is never
    blocked); after a cool-down it half-opens and admits a trickle.
    """


def _breaker(redis_url: str | None, zone: str | None) -> CostBreaker:
    settings = settings_from(redis_url, zone, None)
    return CostBreaker(Ledger(redis_for(settings), settings.zone))


def _doc(s: ScopeStatus) -> dict[str, object]:
    return {
        "scope": s.scope,
        "state": s.state.value,
        "forced": s.forced.value if s.forced else None,
        "spend_usd": {w: round(v, 6) for w, v in s.spend.items()},
        "budget_usd": s.budget,
    }


@budget.command("status")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def budget_status(redis_url: str | None, zone: str | None, keyring: str | None, as_json: bool) -> None:
    """Spend per window against budgets, and each breaker's state."""
    cost = _breaker(redis_url, zone)
    rows = cost.status()
    if as_json:
        click.echo(json.dumps({"zone": cost.zone, "scopes": [_doc(s) for s in rows]}))
        return
    table = Table("scope", "breaker", *(f"spend / budget per {w}" for w in WINDOWS), title=f"zone {cost.zone}")
    for s in rows:
        state = s.state.value.replace("_", "-") + (" (forced)" if s.forced else "")
        cells = []
        for w in WINDOWS:
            if w in s.budget:
                cells.append(f"${s.spend[w]:,.2f} / ${s.budget[w]:,.2f} ({s.spend[w] / s.budget[w]:.0%})")
            else:
                cells.append(f"${s.spend[w]:,.2f}")
        table.add_row(s.scope, state, *cells)
    console.print(table)


@budget.command("set")
@settings_options
@click.argument("scope")
@click.argument("window", type=click.Choice(list(WINDOWS)))
@click.argument("usd", type=float, required=False)
@click.option("--clear", is_flag=True, help="Remove this budget instead.")
@friendly_errors
def budget_set(
    redis_url: str | None, zone: str | None, keyring: str | None, scope: str, window: str, usd: float | None,
    clear: bool,
) -> None:  # fmt: skip
    """Set the budget of SCOPE (`global` or `tenant:<name>`) per WINDOW to USD, e.g. `set global day 250`."""
    if clear == (usd is not None):
        raise ValueError("give an amount in USD, or --clear (not both)")
    cost = _breaker(redis_url, zone)
    cost.ledger.set_budget(scope, window, None if clear else usd)
    click.echo(f"budget of {scope} per {window} in zone {cost.zone}: " + ("removed" if clear else f"${usd:,.2f}"))


@budget.command("force")
@settings_options
@click.argument("scope")
@click.argument("state", type=click.Choice(["open", "closed", "auto"]))
@friendly_errors
def budget_force(redis_url: str | None, zone: str | None, keyring: str | None, scope: str, state: str) -> None:
    """Hold SCOPE's breaker open or closed until released with `auto`."""
    cost = _breaker(redis_url, zone)
    cost.force(scope, None if state == "auto" else State(state))
    what = "released (automatic)" if state == "auto" else f"held {state}"
    click.echo(f"breaker of {scope} in zone {cost.zone}: {what}")
