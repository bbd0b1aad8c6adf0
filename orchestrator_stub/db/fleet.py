"""What a fleet's operator and autoscaler read: queue figures and quarantined workers, from the database, so
every replica reports the same numbers (`metrics.py` serves them to Prometheus)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator_stub.db.attempts import SEEN_WINDOW_S
from orchestrator_stub.db.base import StoreBase


@dataclass(frozen=True)
class FleetFigures:
    queued_by_mode: dict[str, int]
    statuses: dict[str, int]
    oldest_queued_age_s: float
    claims: int
    lease_expiries: int
    workers_seen: int
    quarantined: dict[str, float] = field(default_factory=dict)  # worker id: until when


class FleetMixin(StoreBase):
    """Queue figures for /metrics, and the workers in quarantine."""

    def figures(self) -> FleetFigures:
        with self.db.reading(self._clock) as tx:
            now = tx.now
            by_mode = tx.rows("SELECT mode, COUNT(*) AS n FROM jobs WHERE status = 'queued' GROUP BY mode")
            statuses = tx.rows("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            oldest = tx.scalar("SELECT created_at FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1")
            claims = tx.scalar("SELECT COUNT(*) FROM attempts")
            expiries = tx.scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'expired'")
            seen = tx.scalar("SELECT COUNT(*) FROM workers WHERE last_seen >= :since", since=now - SEEN_WINDOW_S)
            quarantined = self.quarantine.all(tx)
        return FleetFigures(
            queued_by_mode={row["mode"]: int(row["n"]) for row in by_mode},
            statuses={row["status"]: int(row["n"]) for row in statuses},
            oldest_queued_age_s=max(0.0, now - float(oldest)) if oldest is not None else 0.0,
            claims=int(claims),
            lease_expiries=int(expiries),
            workers_seen=int(seen),
            quarantined=quarantined,
        )

    def quarantined(self) -> dict[str, float]:
        """{worker id: until when} for every worker in quarantine now."""
        with self.db.reading(self._clock) as tx:
            return self.quarantine.all(tx)
