"""How checks pass and fail, and how their results combine into a report."""

from __future__ import annotations

import asyncio

import pytest

from mixins.health import CheckResult, HealthCheck, HealthReport, HealthStatus


async def passes_true() -> bool:
    return True


async def passes_none() -> None:
    return None


async def passes_with_detail() -> str:
    return "12 connections"


async def returns_false() -> bool:
    return False


async def raises() -> bool:
    raise ConnectionRefusedError("db:5432 refused")


async def hangs() -> bool:
    await asyncio.Event().wait()
    return True


async def test_true_none_and_a_string_pass() -> None:
    health = HealthCheck()
    health.add_check("true", passes_true)
    health.add_check("none", passes_none)
    health.add_check("detail", passes_with_detail)
    report = await health.check()
    assert report == HealthReport(
        HealthStatus.OK,
        {
            "true": CheckResult(HealthStatus.OK, ""),
            "none": CheckResult(HealthStatus.OK, ""),
            "detail": CheckResult(HealthStatus.OK, "12 connections"),
        },
    )


async def test_no_checks_is_ok() -> None:
    assert await HealthCheck().check() == HealthReport(HealthStatus.OK, {})


async def test_false_fails() -> None:
    health = HealthCheck()
    health.add_check("db", returns_false)
    report = await health.check()
    assert report.status is HealthStatus.FAILING
    assert report.checks["db"] == CheckResult(HealthStatus.FAILING, "check returned False")


async def test_raising_fails_with_the_exception_message() -> None:
    health = HealthCheck()
    health.add_check("db", raises)
    report = await health.check()
    assert report.status is HealthStatus.FAILING
    assert report.checks["db"] == CheckResult(HealthStatus.FAILING, "db:5432 refused")


async def test_a_check_past_the_timeout_fails() -> None:
    health = HealthCheck(timeout_s=0.01)
    health.add_check("slow", hangs)
    health.add_check("fast", passes_true)
    report = await health.check()
    assert report.status is HealthStatus.FAILING
    assert report.checks["slow"] == CheckResult(HealthStatus.FAILING, "timed out after 0.01s")
    assert report.checks["fast"].status is HealthStatus.OK


async def test_a_timeout_error_raised_by_the_check_is_not_reported_as_our_timeout() -> None:
    async def upstream_timeout() -> bool:
        raise TimeoutError("upstream took too long")

    health = HealthCheck(timeout_s=5)
    health.add_check("upstream", upstream_timeout)
    report = await health.check()
    assert report.checks["upstream"].detail == "upstream took too long"


async def test_only_non_critical_failures_degrade() -> None:
    health = HealthCheck()
    health.add_check("db", passes_true)
    health.add_check("cache", returns_false, critical=False)
    report = await health.check()
    assert report.status is HealthStatus.DEGRADED
    assert report.checks["cache"].status is HealthStatus.FAILING


async def test_a_critical_failure_outweighs_non_critical_ones() -> None:
    health = HealthCheck()
    health.add_check("db", raises)
    health.add_check("cache", returns_false, critical=False)
    assert (await health.check()).status is HealthStatus.FAILING


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to have started: run one after the other, both time out.
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a() -> bool:
        a_started.set()
        await b_started.wait()
        return True

    async def b() -> bool:
        b_started.set()
        await a_started.wait()
        return True

    health = HealthCheck(timeout_s=1.0)
    health.add_check("a", a)
    health.add_check("b", b)
    assert (await health.check()).status is HealthStatus.OK


async def test_readiness_runs_the_checks_and_liveness_does_not() -> None:
    health = HealthCheck()
    health.add_check("db", returns_false)
    assert (await health.readiness()).status is HealthStatus.FAILING
    liveness = await health.liveness()
    assert liveness.status is HealthStatus.OK
    assert list(liveness.checks) == ["process"]
    assert liveness.checks["process"].status is HealthStatus.OK


def test_statuses_are_plain_strings() -> None:
    assert [str(s) for s in HealthStatus] == ["ok", "degraded", "failing"]
    assert HealthStatus("degraded") is HealthStatus.DEGRADED


def test_duplicate_names_and_bad_timeouts_are_refused() -> None:
    health = HealthCheck()
    health.add_check("db", passes_true)
    with pytest.raises(ValueError, match="'db' is already registered"):
        health.add_check("db", passes_none)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        HealthCheck(timeout_s=0)
