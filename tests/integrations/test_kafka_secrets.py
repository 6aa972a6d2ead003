"""Credentials given to the Kafka kit never show in a log line, an error message, a repr or
``config`` (issue 13: the rule of defect 2 applied to Kafka).

The kit takes credentials only through ``extra`` (librdkafka settings: ``sasl.*``, ``ssl.*``);
the node's settings have no credential of their own. Every setting that can hold one is set
here, and the failure paths run for real against a broker that does not speak SASL or TLS, and
against no broker at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from integrations.kafka import Consumer, KafkaError, Producer
from integrations.local_kafka import local_kafka

NOWHERE = "127.0.0.1:1"
PLAIN = "Pl41n-S3cret-pw"
OIDC = "0idc-Cl1ent-S3cret"
KEY_PASSWORD = "K3y-Passw0rd-S3cret"
KEYSTORE_PASSWORD = "K3ystore-S3cret"
UNSECURE_JWT = "Jwt-S3cret-Val"
SECRETS = (PLAIN, OIDC, KEY_PASSWORD, KEYSTORE_PASSWORD, UNSECURE_JWT)

SASL_PLAIN = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "svc-user",
    "sasl.password": PLAIN,
    "ssl.key.password": KEY_PASSWORD,
    "ssl.keystore.password": KEYSTORE_PASSWORD,
    "debug": "security,broker,conf",
    "log_level": 7,
}
SASL_OIDC = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "OAUTHBEARER",
    "sasl.oauthbearer.method": "oidc",
    "sasl.oauthbearer.client.id": "svc-client",
    "sasl.oauthbearer.client.secret": OIDC,
    "sasl.oauthbearer.token.endpoint.url": "http://127.0.0.1:1/token",
    "debug": "security,conf",
}
# librdkafka echoes an unparsable sasl.oauthbearer.config in its error, secret and all.
SASL_UNSECURE = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "OAUTHBEARER",
    "enable.sasl.oauthbearer.unsecure.jwt": True,
    "sasl.oauthbearer.config": f"principal=svc secret={UNSECURE_JWT}",
    "debug": "security,conf",
}


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    with local_kafka() as bootstrap:
        yield bootstrap


def assert_clean(texts: list[str]) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in: {text[:300]}"


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    handler_format = logging.Formatter("%(message)s")
    return [handler_format.format(record) for record in caplog.records]


@pytest.mark.parametrize(
    "extra", [SASL_PLAIN, SASL_OIDC, SASL_UNSECURE], ids=lambda e: e["sasl.mechanism"] + str(len(e))
)
async def test_producer_failures_never_show_credentials(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, extra: dict[str, object]
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    # A broker that does not speak SASL: authentication fails, the send times out.
    producer = Producer(kafka_bootstrap, delivery_timeout_ms=1_500, extra=extra)
    texts += [repr(producer), str(producer.config)]
    async with producer:
        with pytest.raises(KafkaError) as caught:
            await producer.send("secrets", b"x")
        texts.append(str(caught.value))
    # No broker at all, and a transactional producer that cannot register.
    dead = Producer(NOWHERE, transactional_id="txn-secret", delivery_timeout_ms=1_000, extra=extra)
    with pytest.raises(KafkaError) as caught:
        await dead.start(timeout_s=1.0)
    texts += [str(caught.value), repr(caught.value), repr(dead), str(dead.config)]
    records = logged(caplog)
    assert records  # the failures were logged (librdkafka's debug lines among them)
    assert_clean(texts + records)
    for key in extra:
        if "password" in key or "secret" in key or key == "sasl.oauthbearer.config":
            assert producer.config[key] == "**redacted**"


async def test_consumer_and_its_dead_letter_producer_never_show_credentials(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    extra = {**SASL_PLAIN, "sasl.oauthbearer.client.secret": OIDC}
    consumer = Consumer(
        kafka_bootstrap, "secret-group", ["secrets"], dead_letter_topic="secrets.dlq", extra=extra
    )
    texts = [repr(consumer), str(consumer.config)]
    assert consumer.config["sasl.password"] == "**redacted**"
    assert consumer.config["ssl.key.password"] == "**redacted**"
    async with consumer:
        assert consumer._dlq_producer is not None
        dlq_config = consumer._dlq_producer.config
        assert dlq_config["sasl.password"] == "**redacted**"  # shared with the DLQ producer
        texts += [str(dlq_config), repr(consumer._dlq_producer)]
        with pytest.raises(KafkaError) as caught:
            await consumer.wait_for_assignment(timeout_s=1.5)
        texts.append(str(caught.value))
    records = logged(caplog)
    assert any("SASL" in line or "authentication" in line.lower() for line in records)
    assert_clean(texts + records)


def test_config_redacts_every_credential_setting() -> None:
    producer = Producer(NOWHERE, extra={**SASL_PLAIN, **{"sasl.oauthbearer.client.secret": OIDC}})
    config = producer.config
    for key in ("sasl.password", "ssl.key.password", "ssl.keystore.password"):
        assert config[key] == "**redacted**"
    assert config["sasl.oauthbearer.client.secret"] == "**redacted**"
    assert config["sasl.username"] == "svc-user"  # not a secret: left for diagnosis
    assert_clean([str(config), repr(producer)])
