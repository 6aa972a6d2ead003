"""The Kafka kit's Prometheus series, shared by the clients given the same registry and name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from integrations.support import (
    MetricsPerRegistryAndName,
)

__all__ = ["KafkaMetrics"]


class KafkaMetrics:
    """Produced/consumed messages and bytes per topic, errors per topic and kind, dead-lettered
    records per source topic, and consumer lag per partition.

    One instance per (registry, name): a producer and a consumer given the same registry and
    name share these series instead of colliding. Bytes are value bytes. Error kinds:
    ``delivery``, ``produce``, ``consume``, ``handler``, ``commit``, ``transaction``,
    ``client``.
    """

    def __init__(self, name: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.produced_messages = Counter(
            f"{name}_produced_messages",
            "Messages acknowledged by the broker.",
            ["topic"],
            registry=registry,
        )
        self.produced_bytes = Counter(
            f"{name}_produced_bytes", "Value bytes acknowledged.", ["topic"], registry=registry
        )
        self.consumed_messages = Counter(
            f"{name}_consumed_messages",
            "Records processed (handled or dead-lettered).",
            ["topic"],
            registry=registry,
        )
        self.consumed_bytes = Counter(
            f"{name}_consumed_bytes", "Value bytes processed.", ["topic"], registry=registry
        )
        self.errors = Counter(
            f"{name}_errors", "Errors by topic and kind.", ["topic", "kind"], registry=registry
        )
        self.dead_lettered = Counter(
            f"{name}_dead_lettered",
            "Records sent to the dead-letter topic, by source topic.",
            ["topic"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            f"{name}_consumer_lag",
            "High watermark minus committed offset, per assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )

    @classmethod
    def get(cls, name: str, registry: CollectorRegistry | None) -> KafkaMetrics:
        """The metrics for ``name`` in ``registry`` (a private registry if None)."""
        return _METRICS.get(registry if registry is not None else CollectorRegistry(), name)


_METRICS = MetricsPerRegistryAndName(lambda registry, name: KafkaMetrics(name, registry))
