"""JSON lines, request ids bound per context, and secret redaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
import structlog
from pydantic import SecretBytes, SecretStr

from mixins.structured_logging import (
    configure_logging,
    get_logger,
    redact_secrets,
    request_context,
)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_lines_are_json_with_iso_timestamp_level_and_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    get_logger("orders").info("created", order=7)
    [line] = json_lines(capsys)
    assert line["event"] == "created"
    assert line["order"] == 7
    assert line["level"] == "info"
    assert line["logger"] == "orders"
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None


def test_request_id_is_shared_within_a_context_and_distinct_across_contexts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    log = get_logger("t")
    with request_context() as first:
        log.info("one")
        log.info("two")
    with request_context() as second:
        log.info("three")
    log.info("outside")
    lines = json_lines(capsys)
    assert [line.get("request_id") for line in lines] == [first, first, second, None]
    assert first != second
    assert len(first) == 32
    int(first, 16)  # hex digits


def test_explicit_id_and_fields_are_bound_and_the_outer_context_is_restored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    log = get_logger("t")
    with request_context("outer", user="ada") as outer:
        assert outer == "outer"
        with request_context("inner", step=2):
            log.info("nested")
        log.info("after")
    log.info("done")
    nested, after, done = json_lines(capsys)
    assert (nested["request_id"], nested["user"], nested["step"]) == ("inner", "ada", 2)
    assert (after["request_id"], after["user"]) == ("outer", "ada")
    assert "step" not in after
    assert "request_id" not in done
    assert "user" not in done


def test_fields_bound_with_structlog_take_precedence_and_event_fields_win_over_both(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    log = get_logger("t")
    with request_context("r-1", user="ada", step=1):
        with structlog.contextvars.bound_contextvars(user="grace"):
            log.info("bound")
        log.info("event", step=2)
    bound, event = json_lines(capsys)
    assert (bound["request_id"], bound["user"], bound["step"]) == ("r-1", "grace", 1)
    assert (event["user"], event["step"]) == ("ada", 2)


async def test_concurrent_tasks_keep_their_own_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    log = get_logger("t")
    a_logged, b_logged = asyncio.Event(), asyncio.Event()

    async def handle(rid: str, mine: asyncio.Event, other: asyncio.Event) -> None:
        with request_context(rid, handler=rid):
            log.info("start")
            mine.set()
            await other.wait()  # interleave with the other task
            log.info("end")

    await asyncio.gather(handle("a", a_logged, b_logged), handle("b", b_logged, a_logged))
    lines = json_lines(capsys)
    assert len(lines) == 4
    assert all(line["request_id"] == line["handler"] for line in lines)
    assert sorted(line["request_id"] for line in lines) == ["a", "a", "b", "b"]


def test_secret_values_are_redacted_even_when_nested(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    get_logger("t").info(
        "connecting",
        token=SecretStr("hunter2"),
        key=SecretBytes(b"s3cr3t-bytes"),
        settings={"dsn": "postgres://db", "password": SecretStr("pa55word")},
        tokens=[SecretStr("in-a-list")],
    )
    out = capsys.readouterr().out
    for secret in ("hunter2", "s3cr3t-bytes", "pa55word", "in-a-list"):
        assert secret not in out
    [line] = [json.loads(text) for text in out.splitlines()]
    assert line["token"] == "**********"
    assert line["key"] == "**********"
    assert line["settings"] == {"dsn": "postgres://db", "password": "**********"}
    assert line["tokens"] == ["**********"]


def test_redaction_goes_by_the_type_not_by_attribute_magic() -> None:
    catch_all = mock.Mock()
    event = redact_secrets(None, "info", {"event": "x", "mock": catch_all, "n": 1})
    assert event == {"event": "x", "mock": catch_all, "n": 1}


def test_level_filters_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    log = get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in json_lines(capsys)] == ["shown"]


def test_configuring_again_neither_duplicates_lines_nor_loses_new_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = get_logger("t")  # obtained before configuration, as at module import time
    configure_logging("INFO")
    configure_logging("INFO")
    log.info("once")
    configure_logging("ERROR")
    log.info("filtered now")
    assert [line["event"] for line in json_lines(capsys)] == ["once"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD")


def test_console_renderer_when_json_is_off(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=False)
    with request_context("r-1"):
        get_logger("t").info("hello", token=SecretStr("hunter2"))
    out = capsys.readouterr().out
    assert "hello" in out
    assert "r-1" in out
    assert "hunter2" not in out
    assert not out.lstrip().startswith("{")
