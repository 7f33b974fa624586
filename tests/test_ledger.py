"""Cost ledger, price table, budgets and the cost breaker against a real Redis; time is a fake clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from broker import keys
from broker.admission import Admission
from broker.breaker import State
from broker.client import Client
from broker.errors import BudgetExceeded, ConfigError
from broker.ledger import BudgetMetrics, CostBreaker, Ledger, PriceTable
from broker.message import JobSpec, Sealer

MINUTE = 60_000


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000 // MINUTE * MINUTE

    def __call__(self) -> int:
        return self.ms

    def advance(self, minutes: float) -> None:
        self.ms += int(minutes * MINUTE)


def prices(zone: str) -> PriceTable:
    return PriceTable.model_validate(
        {
            "zones": {
                zone: {
                    "egress_usd_per_gb": 0.1,
                    "classes": {
                        "a10g": {"on_demand_usd_per_gpu_hour": 1.2, "spot_usd_per_gpu_hour": 0.4},
                        "h100": {"on_demand_usd_per_gpu_hour": 8.0, "spot_usd_per_gpu_hour": 3.0},
                    },
                }
            }
        }
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def ledger(r: redis.Redis, zone: str, clock: FakeClock, registry: CollectorRegistry) -> Ledger:
    led = Ledger(r, zone, prices(zone), clock=clock, metrics=BudgetMetrics(registry))
    led.register_worker("w-spot", "a10g", "spot")
    led.register_worker("w-od", "a10g", "on_demand")
    return led


def test_gpu_seconds_become_spend_by_class_market_and_tenant(ledger: Ledger) -> None:
    charge = ledger.record("w-spot", {"acme": 3600, "beta": 1800})
    assert charge.usd_by_tenant == pytest.approx({"acme": 0.4, "beta": 0.2}) and not charge.flagged
    ledger.record("w-od", {"acme": 360}, egress_bytes=2_000_000_000)  # 0.12 + 0.2 egress
    assert ledger.spend("tenant:acme") == pytest.approx({"hour": 0.72, "day": 0.72})
    assert ledger.spend("global") == pytest.approx({"hour": 0.92, "day": 0.92})
    with pytest.raises(ValueError, match="not negative"):
        ledger.record("w-od", {"acme": -1})


def test_windows_roll_over_with_the_clock(ledger: Ledger, clock: FakeClock, r: redis.Redis, zone: str) -> None:
    ledger.record("w-od", {"acme": 3600})  # $1.20 at minute 0
    clock.advance(30)
    ledger.record("w-od", {"acme": 1800})  # $0.60 at minute 30
    clock.advance(29)  # minute 59: both in the hour
    assert ledger.spend("global") == pytest.approx({"hour": 1.8, "day": 1.8})
    clock.advance(1)  # minute 60: the first bucket has left the hour, not the day
    assert ledger.spend("global") == pytest.approx({"hour": 0.6, "day": 1.8})
    clock.advance(24 * 60 - 60)  # minute 1440: the first left the day too, and is pruned
    assert ledger.spend("global") == pytest.approx({"hour": 0.0, "day": 0.6})
    assert r.hlen(keys.spend(zone, "global")) == 1


def test_unknown_worker_is_recorded_and_flagged(ledger: Ledger, registry: CollectorRegistry, zone: str) -> None:
    charge = ledger.record("stranger", {"acme": 3600}, instance_class="nonesuch")
    assert charge.flagged and charge.usd == pytest.approx(8.0)  # the zone's highest on-demand price
    ledger.record("stranger", {"acme": 3600}, instance_class="a10g", market="spot")
    assert ledger.flagged() == {"stranger": 2}
    assert ledger.spend("global")["hour"] == pytest.approx(8.4)
    assert registry.get_sample_value("hybrid_ledger_unknown_worker_writes_total", {"zone": zone}) == 2


def test_register_worker_refuses_an_unknown_class(ledger: Ledger) -> None:
    with pytest.raises(ConfigError, match=r"unknown instance class 'a100'.*known: a10g, h100"):
        ledger.register_worker("w", "a100", "spot")


def test_bad_budgets_are_refused(ledger: Ledger) -> None:
    for usd in (-1.0, 0.0, float("nan"), float("inf"), 1e12):
        with pytest.raises(ValueError, match="invalid budget"):
            ledger.set_budget("global", "hour", usd)
    with pytest.raises(ValueError, match="invalid budget scope"):
        ledger.set_budget("everyone", "hour", 5)
    with pytest.raises(ValueError, match="invalid budget window"):
        ledger.set_budget("global", "week", 5)
    ledger.set_budget("tenant:acme", "day", 25)
    assert ledger.budgets() == {("tenant:acme", "day"): 25.0}
    ledger.set_budget("tenant:acme", "day", None)
    assert ledger.budgets() == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[zones.z.classes.a10g]\non_demand_usd_per_gpu_hour = -1\nspot_usd_per_gpu_hour = 1\n", "zones.z.egress"),
        (
            "[zones.z]\negress_usd_per_gb = 0.1\n[zones.z.classes.a10g]\non_demand_usd_per_gpu_hour = -1\n"
            "spot_usd_per_gpu_hour = 1\n",
            r"field zones\.z\.classes\.a10g\.on_demand_usd_per_gpu_hour: Input should be greater than 0",
        ),
        (
            "[zones.z]\negress_usd_per_gb = 0.1\n[zones.z.classes.a10g]\non_demand_usd_per_gpu_hour = 4000\n"
            "spot_usd_per_gpu_hour = 1\n",
            r"on_demand_usd_per_gpu_hour: Input should be less than or equal to 1000",
        ),
        ("[zones.z]\negress_usd_per_gb = 0.1\nclasses = {}\n", r"field zones\.z\.classes: .*at least 1"),
        (
            "region = 'x'\n[zones.z]\negress_usd_per_gb = 0\n"
            "classes.l4 = {on_demand_usd_per_gpu_hour = 1, spot_usd_per_gpu_hour = 1}\n",
            r"field region: Extra inputs",
        ),
        ("zones = [\n", "does not parse"),
    ],
)
def test_price_table_defects_name_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        PriceTable.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_price_table_yaml_and_unknown_zone(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "zones:\n  bd-dhaka:\n    egress_usd_per_gb: 0.09\n    classes:\n"
        "      l4: {on_demand_usd_per_gpu_hour: 0.8, spot_usd_per_gpu_hour: 0.3}\n"
    )
    table = PriceTable.load(path)
    assert table.usd_per_gpu_hour("bd-dhaka", "l4", "spot") == 0.3
    with pytest.raises(ConfigError, match="no zone 'in-kolkata'"):
        table.zone("in-kolkata")


def jobs(n: int, tenant: str = "acme") -> list[JobSpec]:
    return [JobSpec(task="noop", inputs={"i": i}, tenant=tenant, lane="batch") for i in range(n)]


def test_breaker_opens_half_opens_with_a_trickle_and_closes(
    r: redis.Redis, sealer: Sealer, zone: str, ledger: Ledger, clock: FakeClock, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    cost = CostBreaker(ledger, cooldown_s=300, trickle=4, probe_s=120, clock=clock)
    client = Client(r, sealer, zone, admission=Admission(r, zone, gate=cost, clock=clock))
    ledger.set_budget("global", "hour", 10.0)
    state = lambda: registry.get_sample_value("hybrid_breaker_state", {"zone": zone, "scope": "global"})  # noqa: E731
    alerts = lambda level: registry.get_sample_value(  # noqa: E731
        "hybrid_budget_alerts_total", {"zone": zone, "scope": "global", "window": "hour", "level": level}
    )

    ledger.record("w-od", {"acme": 3600 * 7})  # $8.40: 84 %
    with caplog.at_level(logging.WARNING, logger="broker.ledger"):
        [status] = cost.evaluate()
    assert status.state is State.CLOSED and alerts("0.8") == 1 and alerts("1") is None
    assert "budget alert: global spent 8.40 of 10.00 USD per hour" in caplog.text
    client.submit_many(jobs(10))

    ledger.record("w-od", {"acme": 3600 * 2})  # $10.80: spent
    [status] = cost.evaluate()
    assert status.state is State.OPEN and state() == 2 and alerts("1") == 1
    assert registry.get_sample_value(
        "hybrid_budget_spend_usd", {"zone": zone, "scope": "global", "window": "hour"}
    ) == (pytest.approx(10.8))
    with pytest.raises(BudgetExceeded) as refused:
        client.submit_many(jobs(1))
    assert refused.value.reason == "budget" and refused.value.limit == "global"
    assert refused.value.retry_after_s == 300 and len(refused.value.unsent) == 1
    cost.evaluate()  # evaluating again while open neither extends the cool-down nor alerts again
    assert alerts("1") == 1

    clock.advance(5)  # cool-down over: half-open admits a trickle of 4 jobs
    client.submit_many(jobs(3))
    with pytest.raises(BudgetExceeded):
        client.submit_many(jobs(2))
    client.submit_many(jobs(1))
    [status] = cost.evaluate()  # the hour still holds $10.80: open again
    assert status.state is State.OPEN and cost.states(["global"])["global"].trips == 2

    clock.advance(55)  # minute 60: the spend has left the hour, and the second cool-down is long over
    [status] = cost.evaluate()
    assert status.state is State.CLOSED and status.spend["hour"] == 0 and state() == 0
    assert len(client.submit_many(jobs(50))) == 50


def test_half_open_closes_only_after_the_probe_time_under_budget(
    r: redis.Redis, sealer: Sealer, zone: str, ledger: Ledger, clock: FakeClock
) -> None:
    cost = CostBreaker(ledger, cooldown_s=3600, trickle=4, probe_s=120, clock=clock)
    client = Client(r, sealer, zone, admission=Admission(r, zone, gate=cost, clock=clock))
    ledger.set_budget("global", "hour", 1.0)
    ledger.record("w-od", {"acme": 3600})  # $1.20 at minute 0
    assert cost.evaluate()[0].state is State.OPEN
    clock.advance(60)  # the spend leaves the window just as the cool-down ends
    [status] = cost.evaluate()
    assert status.state is State.HALF_OPEN and status.spend["hour"] == 0
    client.submit_many(jobs(4))  # the trickle
    with pytest.raises(BudgetExceeded):
        client.submit_many(jobs(1))
    clock.advance(1)
    assert cost.evaluate()[0].state is State.HALF_OPEN  # under budget, but not yet for the probe time
    clock.advance(1)
    assert cost.evaluate()[0].state is State.CLOSED
    assert len(client.submit_many(jobs(50))) == 50


def test_tenant_budget_refuses_only_that_tenant(
    r: redis.Redis, sealer: Sealer, zone: str, ledger: Ledger, clock: FakeClock
) -> None:
    cost = CostBreaker(ledger, clock=clock)
    client = Client(r, sealer, zone, admission=Admission(r, zone, gate=cost, clock=clock))
    ledger.set_budget("tenant:acme", "day", 1.0)
    ledger.record("w-od", {"acme": 3600, "beta": 3600})
    statuses = {s.scope: s.state for s in cost.evaluate()}
    assert statuses == {"global": State.CLOSED, "tenant:acme": State.OPEN}
    with pytest.raises(BudgetExceeded, match="tenant:acme"):
        client.submit_many(jobs(1, "acme"))
    with pytest.raises(BudgetExceeded):  # a batch with any refused tenant is refused whole
        client.submit_many([*jobs(1, "beta"), *jobs(1, "acme")])
    assert len(client.submit_many(jobs(5, "beta"))) == 5


def test_operators_force_open_and_closed(
    r: redis.Redis, sealer: Sealer, zone: str, ledger: Ledger, clock: FakeClock
) -> None:
    cost = CostBreaker(ledger, clock=clock)
    client = Client(r, sealer, zone, admission=Admission(r, zone, gate=cost, clock=clock))
    cost.force("global", State.OPEN)
    with pytest.raises(BudgetExceeded, match="forced"):
        client.submit_many(jobs(1))
    ledger.set_budget("global", "hour", 1.0)
    ledger.record("w-od", {"acme": 36000})
    cost.force("global", State.CLOSED)
    assert cost.evaluate()[0].state is State.CLOSED  # held closed although spent
    client.submit_many(jobs(1))
    cost.force("global", None)
    assert cost.evaluate()[0].state is State.OPEN
    with pytest.raises(BudgetExceeded):
        client.submit_many(jobs(1))
