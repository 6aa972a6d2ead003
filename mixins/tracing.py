"""An OpenTelemetry span per operation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer

_provider: TracerProvider | None = None
# The configured provider's tracer, looked up once: get_tracer builds a new tracer each call.
_tracer: Tracer | None = None
_exporting = False


def configure_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """The tracer provider that ``operation_span`` uses; spans go to ``exporter`` if given.

    The provider is kept here, never installed globally: OpenTelemetry allows one global
    provider per process, and the host application may want to install its own. Called without
    an exporter once a provider with one is configured, it returns that provider unchanged, so
    a node built after the application configured tracing does not silence it.
    """
    global _provider, _tracer, _exporting
    if exporter is None and _provider is not None and _exporting:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider, _exporting = provider, exporter is not None
    _tracer = provider.get_tracer(__name__)
    return provider


@contextlib.contextmanager
def operation_span(
    operation: str, attributes: Mapping[str, str | int | float | bool] | None = None
) -> Iterator[Span]:
    """A span named ``operation``, from the configured provider (else the global one); an
    exception is recorded, sets the ERROR status, and propagates."""
    tracer = _tracer or trace.get_tracer(__name__)
    # Recorded here, for Exception only, rather than by the SDK: some SDK releases also mark
    # cancellation (a BaseException) as an error.
    with tracer.start_as_current_span(
        operation, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
