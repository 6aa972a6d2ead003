"""Named health checks with readiness and liveness reports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

Check = Callable[[], Awaitable[bool | str | None]]


class HealthStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclass(frozen=True)
class CheckResult:
    status: HealthStatus
    detail: str = ""


@dataclass(frozen=True)
class HealthReport:
    status: HealthStatus
    checks: dict[str, CheckResult] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredCheck:
    check: Check
    critical: bool


class HealthCheck:
    """Runs registered checks concurrently, each under ``timeout_s``.

    A check passes by returning True, None or a string (its detail); it fails by returning
    False, raising, or running past the timeout. A failing critical check makes the report
    failing; failing non-critical checks alone make it degraded.
    """

    def __init__(self, timeout_s: float = 2.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._checks: dict[str, RegisteredCheck] = {}

    def add_check(self, name: str, check: Check, *, critical: bool = True) -> None:
        if name in self._checks:
            raise ValueError(f"a health check named {name!r} is already registered")
        self._checks[name] = RegisteredCheck(check, critical)

    async def _run(self, check: Check) -> CheckResult:
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                outcome = await check()
        except TimeoutError as exc:
            # A check may raise TimeoutError itself; only our deadline means "timed out".
            if deadline.expired():
                return CheckResult(HealthStatus.FAILING, f"timed out after {self.timeout_s}s")
            return CheckResult(HealthStatus.FAILING, str(exc) or type(exc).__name__)
        except Exception as exc:
            return CheckResult(HealthStatus.FAILING, str(exc) or type(exc).__name__)
        if outcome is False:
            return CheckResult(HealthStatus.FAILING, "check returned False")
        return CheckResult(HealthStatus.OK, outcome if isinstance(outcome, str) else "")

    async def check(self) -> HealthReport:
        """Run every check concurrently and combine the results."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n].check) for n in names))
        checks = dict(zip(names, results, strict=True))
        failing = [n for n, r in checks.items() if r.status is HealthStatus.FAILING]
        if any(self._checks[n].critical for n in failing):
            status = HealthStatus.FAILING
        elif failing:
            status = HealthStatus.DEGRADED
        else:
            status = HealthStatus.OK
        return HealthReport(status, checks)

    async def readiness(self) -> HealthReport:
        """Can the node take traffic: every registered check."""
        return await self.check()

    async def liveness(self) -> HealthReport:
        """Is the process alive: answering at all means the event loop runs."""
        await asyncio.sleep(0)
        return HealthReport(
            HealthStatus.OK, {"process": CheckResult(HealthStatus.OK, "event loop running")}
        )
