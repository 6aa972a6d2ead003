"""Structured JSON logging through structlog, with a request id bound per call."""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Mapping
from types import MappingProxyType

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

_REDACTED = "**********"
# The fields ``request_context`` binds, in one variable: one set and one reset per call, where
# structlog's ``bind_contextvars`` sets (and resets) a variable per field.
_REQUEST_FIELDS: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "onex_request_fields", default=MappingProxyType({})
)
# Deep enough for `settings=model.model_dump()`; bounded so a cyclic structure cannot recurse.
_MAX_DEPTH = 4


def _redact(value: object, depth: int = 0) -> object:
    # Checked on the type, not the instance: objects with a catch-all __getattr__ (mocks,
    # proxies) are not secrets. pydantic is not imported so that it stays optional.
    if callable(getattr(type(value), "get_secret_value", None)):
        return _REDACTED
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: _redact(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item, depth + 1) for item in value)
    return value


def redact_secrets(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret values (pydantic ``SecretStr``, ``SecretBytes``) with asterisks."""
    for key, value in event_dict.items():
        event_dict[key] = _redact(value)
    return event_dict


class NamedPrintLogger(structlog.PrintLogger):
    """Prints to the current sys.stdout, and knows the name it was created for."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _named_print_logger(*args: object) -> NamedPrintLogger:
    return NamedPrintLogger(str(args[0]) if args else "")


def _merge_request_fields(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    for key, value in _REQUEST_FIELDS.get().items():
        event_dict.setdefault(key, value)
    return event_dict


def _add_logger_name(logger: object, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Log one JSON object per line to stdout at ``level`` and above; safe to call again."""
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR")
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _merge_request_fields,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level.upper()]),
        logger_factory=_named_print_logger,
        # Not cached, so loggers obtained before this call (at import time) follow it too.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry ``logger=name``."""
    # The name goes to the logger factory, not into the bound context: binding would build the
    # logger now and freeze the configuration of the moment into it.
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


def request_context(request_id: str | None = None, **fields: object) -> RequestContext:
    """Bind ``request_id`` (if None, a new random 128-bit id in 32 hex digits) and ``fields``
    to every log line inside the ``with`` block, which gets the id. The previous context is
    restored on exit; fields bound with structlog's ``bind_contextvars`` take precedence."""
    # os.urandom rather than uuid4: the same 128 random bits (less the version field) without
    # building a UUID object, which is dear on a path every call takes.
    return RequestContext(os.urandom(16).hex() if request_id is None else request_id, fields)


class RequestContext:
    """The ``with`` block of ``request_context``.

    A class rather than a ``contextlib.contextmanager`` generator: it runs on every operation
    call, and a generator-based context manager costs several times as much.
    """

    __slots__ = ("_fields", "_token", "request_id")

    def __init__(self, request_id: str, fields: dict[str, object]) -> None:
        self.request_id = request_id
        self._fields = fields
        self._token: contextvars.Token[Mapping[str, object]] | None = None

    def __enter__(self) -> str:
        self._token = _REQUEST_FIELDS.set(
            {**_REQUEST_FIELDS.get(), "request_id": self.request_id, **self._fields}
        )
        return self.request_id

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _REQUEST_FIELDS.reset(self._token)
            self._token = None
