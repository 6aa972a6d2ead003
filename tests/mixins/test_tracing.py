"""Spans per operation, their attributes, error status, and nesting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from mixins import tracing
from mixins.tracing import configure_tracing, operation_span


@pytest.fixture(autouse=True)
def _fresh_module_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_provider", None)
    monkeypatch.setattr(tracing, "_tracer", None)
    monkeypatch.setattr(tracing, "_exporting", False)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing("orders", exporter)
    yield exporter
    exporter.clear()


def test_one_span_per_call_with_attributes_and_service_name(
    exporter: InMemorySpanExporter,
) -> None:
    with operation_span("fetch_order", {"order.id": "o-1", "attempt": 2, "cached": False}):
        pass
    with operation_span("store_order"):
        pass
    first, second = exporter.get_finished_spans()
    assert (first.name, second.name) == ("fetch_order", "store_order")
    assert dict(first.attributes or {}) == {"order.id": "o-1", "attempt": 2, "cached": False}
    assert first.resource.attributes["service.name"] == "orders"
    assert first.status.status_code is StatusCode.UNSET


def test_a_failure_is_recorded_sets_error_status_and_propagates(
    exporter: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError, match="boom"), operation_span("fetch_order"):
        raise RuntimeError("boom")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: boom"
    assert [event.name for event in span.events] == ["exception"]
    assert (span.events[0].attributes or {})["exception.type"] == "RuntimeError"


def test_cancellation_is_not_an_error(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(asyncio.CancelledError), operation_span("fetch_order"):
        raise asyncio.CancelledError
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert list(span.events) == []


def test_nested_spans_are_parented(exporter: InMemorySpanExporter) -> None:
    with operation_span("outer") as outer, operation_span("inner") as inner:
        assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["inner"].parent is not None
    assert spans["inner"].parent.span_id == spans["outer"].context.span_id
    assert spans["outer"].parent is None


async def test_concurrent_tasks_get_sibling_spans(exporter: InMemorySpanExporter) -> None:
    async def op(name: str) -> None:
        with operation_span(name):
            await asyncio.sleep(0)

    with operation_span("batch"):
        await asyncio.gather(op("a"), op("b"))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    batch_id = spans["batch"].context.span_id
    assert spans["a"].parent is not None
    assert spans["b"].parent is not None
    assert (spans["a"].parent.span_id, spans["b"].parent.span_id) == (batch_id, batch_id)


def test_the_global_provider_is_used_when_none_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    app_provider = TracerProvider()
    app_provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: app_provider)
    with operation_span("fetch_order"):
        pass
    assert [span.name for span in exporter.get_finished_spans()] == ["fetch_order"]


def test_configuring_leaves_the_global_provider_alone() -> None:
    before = trace.get_tracer_provider()
    provider = configure_tracing("orders", InMemorySpanExporter())
    assert trace.get_tracer_provider() is before
    assert trace.get_tracer_provider() is not provider


def test_configuring_without_an_exporter_keeps_a_provider_that_exports(
    exporter: InMemorySpanExporter,
) -> None:
    kept = tracing._provider
    assert configure_tracing("orders") is kept
    with operation_span("fetch_order"):
        pass
    assert len(exporter.get_finished_spans()) == 1


def test_configuring_with_a_new_exporter_replaces_the_provider(
    exporter: InMemorySpanExporter,
) -> None:
    newer = InMemorySpanExporter()
    configure_tracing("orders-v2", newer)
    with operation_span("fetch_order"):
        pass
    assert exporter.get_finished_spans() == ()
    [span] = newer.get_finished_spans()
    assert span.resource.attributes["service.name"] == "orders-v2"


def test_a_provider_without_exporter_is_replaced_by_one_with() -> None:
    silent = configure_tracing("orders")
    assert configure_tracing("orders") is not silent  # nothing exported yet: not sticky
    exporter = InMemorySpanExporter()
    configure_tracing("orders", exporter)
    with operation_span("fetch_order"):
        pass
    assert len(exporter.get_finished_spans()) == 1
