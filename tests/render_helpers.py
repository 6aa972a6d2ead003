"""Helpers to render nodes with Copier and run a rendered node's own checks."""

from __future__ import annotations

import contextlib
import os
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import copier

from tests.conftest import REPO_ROOT

# Shared infrastructure in integrations/ that every node with a kit receives: no kit itself.
KIT_SUPPORT = "support"


def kit_modules(integrations: Path, kit: str) -> list[Path]:
    """A kit's modules in an ``integrations`` folder (the template's or a node's): ``<kit>.py``,
    or every module of the package ``<kit>/``; empty when the kit is not there."""
    module = integrations / f"{kit}.py"
    return [module] if module.is_file() else sorted((integrations / kit).glob("*.py"))


def shipped_kits(integrations: Path) -> set[str]:
    """The kits in an ``integrations`` folder: its modules and packages, without ``__init__``
    and the shared support module."""
    modules = {p.stem for p in integrations.glob("*.py")} - {"__init__", KIT_SUPPORT}
    return modules | {p.parent.name for p in integrations.glob("*/__init__.py")}


def render(destination: Path, answers: Mapping[str, Any]) -> Path:
    """Render the template (working tree included) into ``destination`` with ``answers``."""
    copier.run_copy(
        str(REPO_ROOT),
        str(destination),
        data=dict(answers),
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    return destination


def run_checked(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
    return result


def make_node_env(root: Path) -> Path:
    """A virtual environment layered over this one, for installing rendered nodes.

    A `.pth` file puts this environment's site-packages on the new one's path, so the nodes'
    dependencies resolve without downloads while the nodes themselves stay out of it.
    """
    env_dir = root / "node-env"
    run_checked([sys.executable, "-m", "venv", str(env_dir)], root)
    python = env_dir / "bin" / "python"
    target = run_checked(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root
    ).stdout.strip()
    (Path(target) / "_template_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def install_nodes(python: Path, nodes: Sequence[Path]) -> None:
    """Install every node with its dev extra in one pip run (deps are already present)."""
    args = [str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation"]
    for node in nodes:
        args += ["-e", f"{node}[dev]"]
    run_checked(args, nodes[0].parent, timeout=1200)


def check_node(python: Path, node: Path, mypy_cache: Path) -> None:
    """The rendered node's own quality bar: ruff, ruff format, mypy --strict, pytest."""
    env = {"PYTHONDONTWRITEBYTECODE": "1", "MYPY_CACHE_DIR": str(mypy_cache)}
    run_checked([str(python), "-m", "ruff", "check", "--no-cache", "."], node, env)
    run_checked([str(python), "-m", "ruff", "format", "--no-cache", "--check", "."], node, env)
    run_checked([str(python), "-m", "mypy", "--strict", "src"], node, env)
    run_node_tests(python, node, env, may_skip=ONEX_TESTS)


# The one file of a rendered node allowed to skip, and only where omnibase-core is missing;
# the Python 3.12 runs with the onex extra (tests/test_render.py) run it for real.
ONEX_TESTS = "tests/test_onex.py"


def run_node_tests(
    python: Path, node: Path, env: Mapping[str, str], may_skip: str | None = None
) -> None:
    """The node's pytest; a skipped test is a failure here, except in `may_skip`."""
    result = run_checked(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"], node, env
    )
    assert " passed" in result.stdout
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    unexpected = [line for line in skips if may_skip is None or f" {may_skip}:" not in line]
    assert unexpected == [], result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert may_skip is not None or "skipped" not in summary, result.stdout


def make_own_env(root: Path, python: str, node: Path, extras: str) -> Path:
    """A fresh environment (uv) holding only `node`, installed from its own pyproject with
    `extras`: what the node does not declare is not there, so a missing dependency fails its
    checks instead of being lent by another node or by this repository's environment. uv's
    cache makes each one cheap (it links packages from the cache)."""
    env_dir = root / f"env-{node.name}"
    uv = [sys.executable, "-m", "uv"]
    run_checked([*uv, "venv", "--quiet", "--python", python, str(env_dir)], root)
    env_python = env_dir / "bin" / "python"
    install = [*uv, "pip", "install", "--quiet", "--python", str(env_python)]
    run_checked([*install, "-e", f"{node}[{extras}]"], root, timeout=1800)
    return env_python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(python: Path, node: Path, package: str) -> Iterator[str]:
    """`python -m <package> serve` of a rendered node on a free port; yields its base URL and
    stops it with SIGTERM, requiring exit code 0."""
    port = free_port()
    process = subprocess.Popen(
        [str(python), "-m", package, "serve", "--port", str(port)],
        cwd=node,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                output, _ = process.communicate()
                raise AssertionError(f"{package} serve exited early:\n{output}")
            try:
                with urllib.request.urlopen(f"{base_url}/health/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
