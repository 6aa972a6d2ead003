"""The DSN's password never shows: not in the kit's reprs, errors or their chains, nor in any log
line, whatever fails (wrong password, nothing listening, server stopped, a malformed DSN)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import pytest

from integrations.local_postgres import LocalPostgresServer, embedded_postgres
from integrations.postgres import Database, redact_dsn

SECRET = "Sup3r-Secret-Pw"


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgresServer]:
    with embedded_postgres(tcp=True) as started:
        yield started


def everything_shown(exc: BaseException) -> str:
    """The text of ``exc`` as anyone may see it: message, repr, notes, whole traceback and
    every exception chained to it."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), *getattr(current, "__notes__", [])]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def assert_hidden(text: str, secret: str = SECRET) -> None:
    # Any 6-character piece of the secret counts: a DSN split inside it leaks pieces.
    pieces = {secret[i : i + 6] for i in range(len(secret) - 5)}
    leaked = [piece for piece in pieces if piece in text]
    assert not leaked, f"the password shows: {leaked}"


def bad_dsns(server: LocalPostgresServer) -> dict[str, str]:
    port = server.port
    return {
        "wrong password in user info": f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/postgres",
        "wrong password as ?password=": (
            f"postgresql://postgres@127.0.0.1:{port}/postgres?password={SECRET}"
        ),
        "nothing listening, user info": f"postgresql://postgres:{SECRET}@127.0.0.1:1/postgres",
        "nothing listening, ?password=": (
            f"postgresql://postgres@127.0.0.1:1/postgres?password={SECRET}&sslpassword={SECRET}"
        ),
    }


async def test_failures_to_connect_never_show_the_password(
    server: LocalPostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for case, dsn in bad_dsns(server).items():
        db = Database(dsn, min_size=1, max_size=1, retry_initial_backoff_s=0, name="secrets")
        assert_hidden(repr(db))
        with pytest.raises(Exception) as opening:  # noqa: PT011 - any failure, checked below
            await db.open()
        assert_hidden(everything_shown(opening.value))
        # The same failures on a call, where the pool connects lazily and the kit retries.
        lazy = Database(dsn, min_size=0, max_size=1, retry_initial_backoff_s=0, name="secrets")
        async with lazy:
            with pytest.raises(Exception) as calling:  # noqa: PT011
                await lazy.fetchval("SELECT 1")
        assert_hidden(everything_shown(calling.value))
        assert case  # named for the failure message
    assert_hidden(caplog.text)


async def test_the_server_going_away_never_shows_the_password(
    server: LocalPostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = server.dsn("postgres", tcp=True)
    assert server.password is not None
    async with Database(dsn, min_size=1, max_size=2, retry_attempts=2, name="secrets") as db:
        assert await db.fetchval("SELECT 1") == 1
        assert_hidden(repr(db), server.password)
        server.stop()
        try:
            with pytest.raises(Exception) as caught:  # noqa: PT011
                await db.fetchval("SELECT 1")
        finally:
            server.start()
    assert "cannot reach the server" in str(caught.value)
    assert_hidden(everything_shown(caught.value), server.password)
    assert_hidden(caplog.text, server.password)


@pytest.mark.parametrize("delimiter", ["/", "#", "@", "?"])
def test_an_unencoded_delimiter_in_the_password_is_refused_without_showing_it(
    delimiter: str,
) -> None:
    # Regression: "postgres:Sup3r/Secret-Pw@host" was split at the "/", and asyncpg's error
    # ("invalid literal for int() with base 10: 'Sup3r'") showed the start of the password.
    password = f"Sup3rSecr{delimiter}etPwAndMore"
    dsn = f"postgresql://postgres:{password}@127.0.0.1:5432/postgres"
    with pytest.raises(ValueError, match="not percent-encoded") as caught:
        Database(dsn, min_size=0)
    text = everything_shown(caught.value)
    for piece in password.split(delimiter):
        assert piece not in text


def test_redact_dsn_hides_every_secret_and_keeps_the_rest() -> None:
    dsn = (
        f"postgresql://app:{SECRET}@db.internal:5432/orders"
        f"?sslmode=require&password={SECRET}&SSLPASSWORD={SECRET}&application_name=x"
    )
    assert redact_dsn(dsn) == (
        "postgresql://app:***@db.internal:5432/orders"
        "?sslmode=require&password=***&SSLPASSWORD=***&application_name=x"
    )
    assert redact_dsn("postgresql://app@db/orders") == "postgresql://app@db/orders"


def test_a_secret_dsn_is_accepted_and_kept_out_of_the_repr() -> None:
    class Secret:  # what pydantic's SecretStr offers
        def get_secret_value(self) -> str:
            return f"postgresql://app:{SECRET}@db.internal/orders"

    db = Database(Secret(), name="orders")
    assert repr(db) == "<Database 'orders' postgresql://app:***@db.internal/orders closed>"
