"""`python -m orchestrator_stub [--dispatch-to URL]`: read the settings once, then serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn

from orchestrator_stub.app import create_app
from orchestrator_stub.password import warn_if_open
from orchestrator_stub.settings import StubSettingsError, load_settings
from orchestrator_stub.streams import StreamConnections
from worker_app_fastwan.core.logs import setup_logging

log = logging.getLogger("orchestrator_stub")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KEEP_ALIVE_S = 75


class _Server(uvicorn.Server):
    """uvicorn's server, minus its re-raise of the stop signal after the graceful shutdown.

    uvicorn (0.54) re-raises a captured SIGTERM once it has shut down, so the process dies of it (status -15)
    even though it stopped cleanly; a supervisor reads that as a crash. Here the signal only starts the
    graceful shutdown, and `main` returns 0 after it.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()  # called inside serve(), on the main thread's loop
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="orchestrator_stub",
        description="Local orchestrator: buffer-mode protocol for workers, /v1 API for people, Salad-style dispatch.",
    )
    parser.add_argument(
        "--dispatch-to",
        metavar="URL",
        help="also POST queued jobs one at a time to URL (a queue-mode worker's /generate), like Salad's job queue",
    )
    parser.add_argument("--env-file", default=".env", help="optional env file (default: .env); the environment wins")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides = {"DISPATCH_TO": args.dispatch_to} if args.dispatch_to else {}
    try:
        settings = load_settings(env_file=args.env_file, **overrides)
    except StubSettingsError as exc:
        print(f"orchestrator_stub: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, process="orchestrator_stub", fmt=settings.LOG_FORMAT)
    log.info("starting", extra={"settings": settings.summary()})
    warn_if_open(settings.STUB_HOST, settings.password())
    try:
        app = create_app(settings)
    except StubSettingsError as exc:  # storage credentials that do not work (B2's authorization refused them)
        print(f"orchestrator_stub: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        StreamConnections(app),
        host=settings.STUB_HOST,
        port=settings.STUB_PORT,
        log_config=None,
        access_log=False,
        # Longer than a load balancer's usual idle timeout (60 s), and than a worker's gaps between calls
        # (heartbeats every 5 s): the client, not the stub, lets an idle connection go, so none is closed by
        # the stub just as a request is sent on it.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    _Server(config).run()  # a failed start-up (busy port, lifespan error) leaves through uvicorn's sys.exit(3)
    return 0
