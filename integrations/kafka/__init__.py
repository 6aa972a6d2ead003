"""Kafka for asyncio nodes: an idempotent producer, an at-least-once consumer with a dead-letter
topic, and exactly-once consume-transform-produce, over confluent-kafka (librdkafka).

The asyncio bridge is written here, not taken from ``confluent_kafka.aio``:

* ``AIOProducer.produce`` refuses message headers (it batches through ``produce_batch``,
  which has none), and the dead-letter records need them; it is a coroutine, so there is no
  enqueue-without-awaiting for hot loops; its own buffer holds a lone message up to
  ``buffer_timeout`` (1 s) unless flushed; and it pays for a future per message where
  ``send_batch`` here has one per batch.
* ``AIOConsumer`` runs every call on a thread pool (100 threads by default) and leaves
  committing after processing, dead-lettering and rebalance bookkeeping to the caller, which
  is what this package is for.

Modules: ``producer`` (Producer; its bounded ``overflow`` and ``delivery`` bookkeeping),
``consumer`` (Consumer), ``pipeline`` (TransactionalPipeline), ``client_thread`` (the thread
that runs a client's blocking calls off the loop), ``records``, ``errors``, ``metrics``,
``config`` and ``redaction`` (credentials kept out of logs, errors and reprs).
"""

from __future__ import annotations

from integrations.kafka.config import (
    Compression,
)
from integrations.kafka.consumer import (
    Consumer,
)
from integrations.kafka.errors import (
    BatchDeliveryError,
    HandlerError,
    KafkaError,
    ProducerFencedError,
    ProducerQueueFullError,
)
from integrations.kafka.metrics import (
    KafkaMetrics,
)
from integrations.kafka.pipeline import (
    Checkpoint,
    TransactionalPipeline,
    Transform,
)
from integrations.kafka.producer import (
    Producer,
)
from integrations.kafka.records import (
    UNKNOWN_OFFSET,
    BatchDelivery,
    Delivery,
    Record,
    dead_letter_headers,
)
from integrations.kafka.redaction import (
    REDACTED,
    SecretScrubber,
)

__all__ = [
    "REDACTED",
    "UNKNOWN_OFFSET",
    "BatchDelivery",
    "BatchDeliveryError",
    "Checkpoint",
    "Compression",
    "Consumer",
    "Delivery",
    "HandlerError",
    "KafkaError",
    "KafkaMetrics",
    "Producer",
    "ProducerFencedError",
    "ProducerQueueFullError",
    "Record",
    "SecretScrubber",
    "TransactionalPipeline",
    "Transform",
    "dead_letter_headers",
]
