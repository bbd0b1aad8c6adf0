"""A PostgreSQL password in STUB_DB is never shown: not in the settings' summary (the start-up log line), not in
the store's repr, not in the error a wrong password or a bad URL makes."""

from __future__ import annotations

import logging

import pytest
from support.postgres import PostgresServer

from orchestrator_stub.app import create_app
from orchestrator_stub.db import Database, mask_password
from orchestrator_stub.settings import StubSettingsError, load_settings

SECRET = "s3cr3t-Pa55word-9f2"


def test_the_summary_and_the_repr_mask_the_password() -> None:
    url = f"postgresql://stub:{SECRET}@db.example:5432/jobs"
    settings = load_settings(None, INTERNAL_API_KEY="k", STUB_DB=url)
    shown = settings.summary()["STUB_DB"]
    assert shown == "postgresql://stub:***@db.example:5432/jobs"
    assert SECRET not in str(settings.summary()) and SECRET not in repr(settings.summary())
    assert SECRET not in repr(Database(url)) and SECRET not in str(Database(url))
    assert mask_password("stub.sqlite3") == "stub.sqlite3"


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(StubSettingsError) as caught:
        load_settings(None, INTERNAL_API_KEY="k", STUB_DB=f"postgresql://stub:{SECRET}@/")
    assert "STUB_DB" in str(caught.value) and SECRET not in str(caught.value)


def test_a_wrong_password_fails_the_start_without_showing_it(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres_server.url("postgres", password=SECRET)
    with caplog.at_level(logging.DEBUG), pytest.raises(StubSettingsError) as caught:
        create_app(load_settings(None, INTERNAL_API_KEY="k", STUB_DB=url))
    message = str(caught.value)
    assert "password authentication failed" in message and f":{postgres_server.port}/" in message
    assert SECRET not in message and SECRET not in caplog.text


def test_the_start_up_log_names_the_database_without_its_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres_server.url(postgres_server.create_database("url_log"))
    with caplog.at_level(logging.DEBUG):
        app = create_app(load_settings(None, INTERNAL_API_KEY="k", STUB_DB=url))
    ready = [r for r in caplog.records if r.getMessage() == "database ready"]
    assert ready and ready[0].db == mask_password(url) and ready[0].backend == "postgresql"  # type: ignore[attr-defined]
    assert postgres_server.password not in caplog.text
    del app
