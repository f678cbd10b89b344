"""Prometheus metrics of one replica (``GET /metrics``, ``docs/metrics.md``).

Two kinds, both in the exposition of ``/metrics``:

- **Counters and histograms of events** (BMC operations, power-sync failures, boot decisions,
  enrollments, config pushes, REST latency, database transactions) live in :data:`PROCESS`, a
  registry of this process (one replica = one process), incremented where the event happens.
- **State read at scrape time** (machines by phase and power state, agents connected to this
  replica, rollout progress, the boot plane's DHCP/TFTP counters) comes from
  :class:`AppCollector`, which reads the database and the in-process planes of one app when
  Prometheus asks. Gauges of fleet state are the same on every replica (one database); the
  counters are each replica's own.

This module imports nothing of the server at import time (the database layer imports it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bmc import BmcEndpoint, BmcResult

log = logging.getLogger(__name__)

# No ``*_created`` series: one more series per counter and histogram child, which Prometheus
# (before its created-timestamp feature) stores as a gauge nobody graphs.
disable_created_metrics()

PROCESS = CollectorRegistry(auto_describe=True)
"""Event counters of this process (see the module docstring)."""

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BMC_LATENCY = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

BMC_OPERATIONS = Counter(
    "bronze_bmc_operations",
    "BMC operations finished, by driver, action (power-on, power-cycle, boot-pxe, get-power, ...) "
    "and result (ok or the error's class)",
    ["driver", "action", "result"],
    registry=PROCESS,
)
BMC_SECONDS = Histogram(
    "bronze_bmc_operation_seconds",
    "Time of one BMC operation, retries and read-back verification included",
    ["driver", "action"],
    buckets=_BMC_LATENCY,
    registry=PROCESS,
)
POWER_SYNC_FAILURES = Counter(
    "bronze_power_sync_failures",
    "Power-sync reads that could not tell the power state (BMC unreachable, refused, ...)",
    registry=PROCESS,
)
BOOT_DECISIONS = Counter(
    "bronze_boot_decisions",
    "Boot-plane decisions: stage dhcp (boot allowed or not) and script (the iPXE action sent)",
    ["stage", "action"],
    registry=PROCESS,
)
ENROLLMENTS = Counter(
    "bronze_agent_enrollments",
    "Agent enrollment attempts: result enrolled or refused, with the refusal's reason",
    ["result", "reason"],
    registry=PROCESS,
)
CONFIG_PUSHES = Counter(
    "bronze_config_pushes",
    "Machine configs queued for an agent (sent now if connected, else on connect)",
    registry=PROCESS,
)
AGENT_RESULTS = Counter(
    "bronze_agent_command_results",
    "Results of agent commands, by kind (apply = a config was applied) and result",
    ["kind", "result"],
    registry=PROCESS,
)
HTTP_SECONDS = Histogram(
    "bronze_http_request_seconds",
    "REST/UI request latency by method, route template (never the raw path) and status",
    ["method", "route", "status"],
    buckets=_LATENCY,
    registry=PROCESS,
)
DB_SECONDS = Histogram(
    "bronze_db_transaction_seconds",
    "Database session latency (read: a read session; write: a committed or rolled back "
    "transaction), lock waits included",
    ["kind"],
    buckets=_LATENCY,
    registry=PROCESS,
)


def observe_bmc(endpoint: BmcEndpoint, name: str, result: BmcResult) -> None:
    """``bmc.BmcController`` observer: one finished BMC operation."""
    outcome = "ok" if result.error is None else type(result.error).__name__
    driver = endpoint.driver.value
    BMC_OPERATIONS.labels(driver, name, outcome).inc()
    BMC_SECONDS.labels(driver, name).observe(result.elapsed)


class _Process(Collector):
    """The process registry, seen from an app's registry."""

    def collect(self) -> Iterable[Metric]:
        return PROCESS.collect()


class AppCollector(Collector):
    """Fleet state and the boot plane's counters of one app, read at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._database()
        except Exception as exc:  # noqa: BLE001 - a scrape shows what it can
            log.warning("metrics: database state not read error=%s", type(exc).__name__)
            up = GaugeMetricFamily(
                "bronze_metrics_database_up", "1 when the database state was read"
            )
            up.add_metric([], 0)
            yield up
        yield from self._agents()
        yield from self._boot_plane()

    def _database(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from server.inventory.models import Machine
        from server.rollouts.models import Rollout, RolloutMachine
        from server.types import Phase

        db = self.app.state.ctx.db
        with db.read() as s:
            phases = dict(
                s.execute(select(Machine.phase, func.count()).group_by(Machine.phase)).all()
            )
            power = dict(
                s.execute(
                    select(Machine.power_observed, func.count()).group_by(Machine.power_observed)
                ).all()
            )
            rollouts = dict(
                s.execute(select(Rollout.status, func.count()).group_by(Rollout.status)).all()
            )
            active = [r for r in rollouts if r in ("running", "paused", "aborting")]
            progress = s.execute(
                select(RolloutMachine.rollout_id, RolloutMachine.state, func.count())
                .join(Rollout, Rollout.id == RolloutMachine.rollout_id)
                .where(Rollout.status.in_(active))
                .group_by(RolloutMachine.rollout_id, RolloutMachine.state)
            ).all()
            progress_rows = list(progress)
        up = GaugeMetricFamily("bronze_metrics_database_up", "1 when the database state was read")
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("bronze_machines", "Machines by lifecycle phase", labels=["phase"])
        for phase in Phase:
            g.add_metric([phase.value], phases.get(phase.value, 0))
        yield g
        g = GaugeMetricFamily(
            "bronze_machines_power", "Machines by observed power state", labels=["state"]
        )
        for state in sorted(set(power) | {"on", "off", "unknown"}):
            g.add_metric([state], power.get(state, 0))
        yield g
        g = GaugeMetricFamily("bronze_rollouts", "Rollouts by status", labels=["status"])
        for status, n in sorted(rollouts.items()):
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily(
            "bronze_rollout_machines",
            "Machines of unfinished rollouts by their state in the rollout",
            labels=["rollout", "state"],
        )
        for rollout_id, state, n in progress_rows:
            g.add_metric([rollout_id, state], n)
        yield g

    def _agents(self) -> Iterator[Metric]:
        api = getattr(self.app.state, "agent_api", None)
        g = GaugeMetricFamily(
            "bronze_agents_connected", "Agent sessions held by this replica right now"
        )
        g.add_metric([], len(api.hub.connected()) if api is not None else 0)
        yield g

    def _boot_plane(self) -> Iterator[Metric]:
        pxe = getattr(self.app.state, "pxe", None)
        if pxe is None:
            return
        d = pxe.dhcp.stats
        c = CounterMetricFamily("bronze_dhcp_received", "DHCP datagrams received")
        c.add_metric([], d.received)
        yield c
        c = CounterMetricFamily("bronze_dhcp_answered", "DHCP packets answered")
        c.add_metric([], d.answered)
        yield c
        c = CounterMetricFamily(
            "bronze_dhcp_packets", "DHCP packets handled, by message type", labels=["type"]
        )
        for kind, n in sorted(d.by_type.items()):
            c.add_metric([str(kind)], n)
        yield c
        c = CounterMetricFamily(
            "bronze_dhcp_dropped", "DHCP datagrams dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(d.dropped.items()):
            c.add_metric([str(reason)], n)
        yield c
        if pxe.tftp is None:
            return
        t = pxe.tftp.stats
        c = CounterMetricFamily(
            "bronze_tftp_transfers",
            "TFTP transfers: started, completed, aborted, refused (an error sent)",
            labels=["result"],
        )
        for name in ("started", "completed", "aborted", "refused"):
            c.add_metric([name], getattr(t, name))
        yield c
        c = CounterMetricFamily("bronze_tftp_sent_bytes", "Bytes of file data sent over TFTP")
        c.add_metric([], t.bytes_sent)
        yield c
        c = CounterMetricFamily(
            "bronze_tftp_errors", "TFTP error packets sent, by TFTP error code", labels=["code"]
        )
        for code, n in sorted(t.by_error.items()):
            c.add_metric([str(code)], n)
        yield c


def registry_for(app: Any) -> CollectorRegistry:
    """One app's registry: the process counters and that app's state."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Process())
    reg.register(AppCollector(app))
    return reg
