"""`hybrid budget status|set|force` as an operator uses it: real processes, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from broker.embedded import EmbeddedRedis
from broker.ledger import CostBreaker, Ledger, PriceTable


def hybrid(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HYB_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "hybrid", *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def one_line_error(out: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert out.returncode == code, out
    assert text in out.stderr and "Traceback" not in out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert lines[0].startswith("error: ") or (len(lines) == 3 and lines[0].startswith("Usage:"))  # ours, or click's
    assert len(lines) <= 3


def test_set_force_and_status(redis_server: EmbeddedRedis, r: redis.Redis, zone: str) -> None:
    env = {"REDIS_URL": redis_server.url, "HYB_ZONE": zone}
    assert "$250.00" in hybrid("budget", "set", "global", "day", "250", env=env).stdout
    assert hybrid("budget", "set", "tenant:acme", "hour", "2.5", env=env).returncode == 0
    prices = PriceTable.model_validate(
        {"zones": {zone: {"egress_usd_per_gb": 0, "classes": {"l4": {"on_demand_usd_per_gpu_hour": 1.0,
                                                                     "spot_usd_per_gpu_hour": 0.5}}}}}
    )  # fmt: skip
    ledger = Ledger(r, zone, prices)
    ledger.register_worker("w1", "l4", "on_demand")
    ledger.record("w1", {"acme": 3 * 3600})  # $3 > acme's $2.50 per hour
    CostBreaker(ledger).evaluate()

    status = json.loads(hybrid("budget", "status", "--json", env=env).stdout)
    scopes = {s["scope"]: s for s in status["scopes"]}
    assert status["zone"] == zone
    assert scopes["tenant:acme"]["state"] == "open" and scopes["tenant:acme"]["budget_usd"] == {"hour": 2.5}
    assert scopes["global"]["state"] == "closed" and scopes["global"]["spend_usd"] == {"hour": 3.0, "day": 3.0}

    assert "held closed" in hybrid("budget", "force", "tenant:acme", "closed", env=env).stdout
    table = hybrid("budget", "status", env=env).stdout
    assert "closed (forced)" in table and "$3.00 / $2.50 (120%)" in table
    assert hybrid("budget", "force", "tenant:acme", "auto", env=env).returncode == 0
    status = json.loads(hybrid("budget", "status", "--json", env=env).stdout)
    assert {s["scope"]: (s["state"], s["forced"]) for s in status["scopes"]}["tenant:acme"] == ("open", None)

    assert "removed" in hybrid("budget", "set", "tenant:acme", "hour", "--clear", env=env).stdout
    assert ("tenant:acme", "hour") not in ledger.budgets()


def test_bad_input_is_one_line_and_exit_2(redis_server: EmbeddedRedis, zone: str) -> None:
    env = {"REDIS_URL": redis_server.url, "HYB_ZONE": zone}
    one_line_error(hybrid("budget", "set", "global", "day", "0", env=env), 2, "invalid budget 0.0 USD")
    one_line_error(hybrid("budget", "set", "global", "day", "1e12", env=env), 2, "invalid budget")
    one_line_error(hybrid("budget", "set", "global", "day", "--", "-5", env=env), 2, "invalid budget -5.0 USD")
    one_line_error(hybrid("budget", "set", "global", "day", "lots", env=env), 2, "'lots' is not a valid float")
    one_line_error(hybrid("budget", "set", "global", "week", "5", env=env), 2, "'week' is not one of")
    one_line_error(hybrid("budget", "set", "everyone", "day", "5", env=env), 2, "invalid budget scope 'everyone'")
    one_line_error(hybrid("budget", "set", "global", "day", env=env), 2, "give an amount in USD, or --clear")
    one_line_error(hybrid("budget", "force", "global", "ajar", env=env), 2, "'ajar' is not one of")


def test_unreachable_redis_exits_69() -> None:
    out = hybrid("budget", "status", "--redis-url", "redis://127.0.0.1:1/0", "--zone", "z")
    one_line_error(out, 69, "not reachable")
