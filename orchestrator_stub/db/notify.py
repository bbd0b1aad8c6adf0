"""PostgreSQL's LISTEN/NOTIFY between replicas: what another replica committed wakes this one's waiting claims,
its dispatcher, its event streams and its webhook sender at once, instead of at their next poll.

One thread per replica holds its own connection (outside the pool: a listening connection must stay open),
LISTENs on the store's channels and hands each notice to the store's subscribers (`StoreBase.announce_*`).
Notices from this replica's own connections are skipped: it announced those itself at commit. A lost
connection is reopened with a growing pause; since notices sent meanwhile are gone, reopening announces "anything
may have been queued", events and webhooks too, and every waiter also polls on a timeout, so a lost notice only
delays work.
"""

from __future__ import annotations

import logging
import threading

from orchestrator_stub.db.base import EVENTS_CHANNEL, QUEUED_CHANNEL, WEBHOOKS_CHANNEL, StoreBase
from orchestrator_stub.db.schema import Queued

log = logging.getLogger("orchestrator_stub.db.notify")

POLL_S = 0.5  # how often the thread looks up from waiting to see whether it should stop
MAX_PAUSE_S = 10.0


class Listener:
    def __init__(self, store: StoreBase) -> None:
        assert store.db.postgres, "LISTEN/NOTIFY is PostgreSQL's"
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg  # here, not at the top: only a PostgreSQL stub listens, and a SQLite one starts without it

        pause = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                pause = 0.5
            except psycopg.Error as exc:  # the message names the server, never the password
                log.warning("database listener disconnected", extra={"error": f"{type(exc).__name__}: {exc}"})
            except Exception:  # a notice it could not read must not end the thread
                log.exception("database listener failed")
            self.connected.clear()
            self._stop.wait(pause)
            pause = min(pause * 2, MAX_PAUSE_S)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(
            self._store.db.listen_conninfo(), autocommit=True, connect_timeout=10, application_name="stub-listener"
        ) as conn:
            for channel in (QUEUED_CHANNEL, EVENTS_CHANNEL, WEBHOOKS_CHANNEL):
                conn.execute(f"LISTEN {channel}")
            self.connected.set()
            # Whatever happened while nobody listened.
            self._store.announce_queued(None)
            self._store.announce_event()
            self._store.announce_webhook()
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=POLL_S):
                    if notice.pid in self._store.db.own_pids:
                        continue
                    if notice.channel == EVENTS_CHANNEL:
                        self._store.announce_event()
                    elif notice.channel == WEBHOOKS_CHANNEL:
                        self._store.announce_webhook()
                    elif notice.channel == QUEUED_CHANNEL:
                        self._store.announce_queued(Queued.from_payload(notice.payload))
