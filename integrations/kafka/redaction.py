"""Credentials kept out of everything the Kafka kit logs, raises or shows.

librdkafka echoes parts of its configuration in some errors (an unparsable
``sasl.oauthbearer.config``, for one), so the secrets of every client built here are
remembered and scrubbed from each message of the kit's logger and each KafkaError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

__all__ = ["REDACTED", "SecretScrubber", "log", "redacted", "register_secrets", "scrub"]

REDACTED = "**redacted**"

# The kit's one logger, named after the package (which the copy into a node renames): every
# module of the kit logs here, so that the scrubbing filter below sees every record.
log = logging.getLogger(__name__.rpartition(".")[0])

# Grows only with distinct configured secrets.
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
# librdkafka settings that hold credentials, matched by these parts of their names.
_SECRET_MARKERS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl_key")


def _is_secret(key: str) -> bool:
    return any(marker in key.lower() for marker in _SECRET_MARKERS)


def redacted(conf: Mapping[str, object]) -> dict[str, object]:
    """``conf`` with the value of every credential setting replaced by REDACTED."""
    return {key: REDACTED if _is_secret(key) else value for key, value in conf.items()}


def register_secrets(conf: Mapping[str, object]) -> None:
    """Remember the credentials in ``conf``, to be scrubbed from now on."""
    found: set[str] = set()
    for key, value in conf.items():
        if not (_is_secret(key) and isinstance(value, str) and value):
            continue
        found.add(value)
        # "principal=admin secret=..." is echoed piecemeal: each value is a secret too.
        for part in value.split():
            found.add(part)
            found.add(part.partition("=")[2])
    found.discard("")
    if found:
        with _SECRETS_LOCK:
            _SECRETS.update(found)


def scrub(text: str) -> str:
    """``text`` with every registered credential replaced by REDACTED."""
    if not _SECRETS:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretScrubber(logging.Filter):
    """Redact configured credentials from every record of the kit's logger, librdkafka's own
    log lines (routed there) included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


log.addFilter(SecretScrubber())
