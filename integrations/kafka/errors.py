"""The Kafka kit's errors: librdkafka's reports described with their context, credentials
scrubbed."""

from __future__ import annotations

from collections.abc import Sequence

import confluent_kafka as ck

from integrations.kafka.records import (
    Record,
)
from integrations.kafka.redaction import (
    scrub,
)

__all__ = [
    "BatchDeliveryError",
    "HandlerError",
    "KafkaError",
    "ProducerFencedError",
    "ProducerQueueFullError",
    "message_timed_out",
]

# librdkafka's names for "fenced by a newer instance".
_FENCED = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})


class KafkaError(Exception):
    """A Kafka operation failed. ``code`` is librdkafka's error name when it reported one;
    ``retriable`` says trying again may succeed, ``fatal`` that the client is unusable."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retriable: bool = False,
        fatal: bool = False,
        txn_requires_abort: bool = False,
    ) -> None:
        super().__init__(scrub(message))
        self.code = code
        self.retriable = retriable
        self.fatal = fatal
        self.txn_requires_abort = txn_requires_abort

    @classmethod
    def wrap(cls, context: str, error: BaseException | ck.KafkaError) -> KafkaError:
        """Describe a librdkafka error (or the KafkaException carrying it) as ``context: why``."""
        err = error.args[0] if isinstance(error, ck.KafkaException) and error.args else error
        if isinstance(err, ck.KafkaError):
            # Fenced is for good, even where librdkafka first reports it as an abortable
            # transaction error (its local _FENCED, seen from send_offsets_to_transaction).
            fenced = err.name() in _FENCED
            kind = ProducerFencedError if fenced else cls
            why = "fenced by a newer producer with the same transactional_id: " if fenced else ""
            return kind(
                f"{context}: {why}{err.str()} ({err.name()})",
                code=err.name(),
                retriable=err.retriable() and not fenced,
                fatal=err.fatal() or fenced,
                txn_requires_abort=err.txn_requires_abort(),
            )
        return cls(f"{context}: {err}")


class ProducerFencedError(KafkaError):
    """A newer producer with the same ``transactional_id`` started: this one is fenced for
    good (``fatal``). Its open transaction is aborted by the broker; stop it."""


class ProducerQueueFullError(KafkaError):
    """``send_nowait`` (or part of a ``send_batch``) found librdkafka's queue and the
    producer's own overflow full: the message was not queued. ``await send()`` waits for room
    instead; so does ``flush()`` before sending more."""


def message_timed_out(name: str, topic: str, timeout_ms: int) -> KafkaError:
    """A message that waited ``timeout_ms`` for room in the local queue and was not sent."""
    # The same code librdkafka gives a message that outlived delivery.timeout.ms, so that a
    # caller handles both alike.
    return KafkaError(
        f"{name}: delivery to {topic} failed: message timed out after {timeout_ms} ms "
        "waiting for room in the local queue (_MSG_TIMED_OUT)",
        code="_MSG_TIMED_OUT",
        retriable=True,
    )


class HandlerError(KafkaError):
    """A handler raised for ``record`` and no dead-letter topic was configured; the offsets of
    the records before it are committed, the record itself is not."""

    def __init__(self, record: Record, error: BaseException) -> None:
        super().__init__(
            f"handler failed for {record.topic}[{record.partition}]@{record.offset} "
            f"and no dead-letter topic is configured: {type(error).__name__}: {error}"
        )
        self.record = record


class BatchDeliveryError(KafkaError):
    """Some messages of a batch were not delivered. ``failed`` holds each one's key, value
    and error, in the order the reports came, so that the caller can send them again;
    ``delivered`` counts the others."""

    def __init__(
        self,
        topic: str,
        count: int,
        failed: Sequence[tuple[bytes | None, bytes, KafkaError]],
    ) -> None:
        first = failed[0][2]
        super().__init__(
            f"{len(failed)} of {count} message(s) to {topic} not delivered; first: {first}",
            code=first.code,
            retriable=all(error.retriable for _, _, error in failed),
            fatal=any(error.fatal for _, _, error in failed),
        )
        self.topic = topic
        self.delivered = count - len(failed)
        self.failed = list(failed)
