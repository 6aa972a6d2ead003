"""The Copier questionnaire: validators stop bad answers before anything is written, the
selector's recommendation becomes the default, and any answer text survives rendering."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extensions.questionnaire import mixin_choices, vocabulary_help
from selector import default_registry
from tests.conftest import REPO_ROOT
from tests.render_helpers import render

BASE = {"node_name": "sample_node"}


@pytest.mark.parametrize(
    ("answers", "question", "fragment"),
    [
        ({"node_name": "class"}, "node_name", "Python keyword"),
        ({"node_name": "os"}, "node_name", "standard-library module"),
        ({"node_name": "../escape"}, "node_name", "looks like a path"),
        ({"node_name": "a/b"}, "node_name", "looks like a path"),
        ({"node_name": "Bad-Name"}, "node_name", "not snake_case"),
        ({"operations": []}, "operations", "at least one"),
        ({"operations": ["a", "a"]}, "operations", "listed twice"),
        ({"operations": ["not valid"]}, "operations", "not snake_case"),
        ({"variant": "workflow"}, "variant", "does not support effect nodes"),
        (
            {"node_type": "compute", "variant": "database_heavy"},
            "variant",
            "supports effect, reducer",
        ),
        ({"variant": "turbo"}, "variant", "is not in"),
        ({"mixins_added": ["teleport"]}, "mixins_added", "is not in"),
        (
            {"variant": "api_heavy", "mixins_removed": ["circuit_breaker"]},
            "mixins_removed",
            "needs circuit_breaker",
        ),
        ({"node_type": "gateway"}, "node_type", "is not in"),
        ({"author_email": "nobody"}, "author_email", "name@domain"),
    ],
)
def test_bad_answers_are_refused_and_nothing_is_written(
    tmp_path: Path, answers: dict[str, Any], question: str, fragment: str
) -> None:
    destination = tmp_path / "node"
    with pytest.raises(ValueError, match=question) as caught:
        render(destination, {**BASE, **answers})
    assert fragment in str(caught.value)
    assert not destination.exists() or not any(destination.iterdir())


def contract_path(node: Path) -> Path:
    """The ONEX contract, inside the node's package."""
    (path,) = (node / "src").glob("*/contract.yaml")
    return path


def test_the_recommendation_is_the_default_variant_and_is_stored(tmp_path: Path) -> None:
    node = render(
        tmp_path / "node",
        {**BASE, "node_type": "reducer", "features": ["p95", "histograms", "retries"]},
    )
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text())
    assert answers["variant"] == "analytics"
    assert answers["features"] == ["p95", "histograms", "retries"]
    contract = yaml.safe_load(contract_path(node).read_text())
    assert contract["annotations"]["variant"]["name"] == "analytics"
    assert contract["annotations"]["variant"]["recommended"] == "analytics"
    assert contract["annotations"]["variant"]["selector_version"]
    assert contract["node_type"] == "REDUCER_GENERIC"


def test_an_override_is_kept_and_the_recommendation_recorded(tmp_path: Path) -> None:
    node = render(tmp_path / "node", {**BASE, "features": ["postgres"], "variant": "production"})
    contract = yaml.safe_load(contract_path(node).read_text())
    assert contract["annotations"]["variant"]["name"] == "production"
    assert contract["annotations"]["variant"]["recommended"] == "database_heavy"
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text())
    # Only the person's changes to the variant's mixins are stored, not the derived list.
    assert (answers["mixins_added"], answers["mixins_removed"]) == ([], [])
    assert "mixins" not in answers
    assert contract["annotations"]["mixins"] == [
        "structured_logging",
        "metrics",
        "health",
        "circuit_breaker",
        "retry",
        "tracing",
        "events",
        "lifecycle",
    ]


def test_cli_copy_prints_the_selection(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "copier",
            "copy",
            "--trust",
            "--defaults",
            "--vcs-ref",
            "HEAD",
            "--data",
            "node_name=cli_node",
            "--data",
            "features=[kafka, dlq]",
            str(REPO_ROOT),
            str(tmp_path / "cli_node"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "as variant 'kafka_heavy'" in out.stdout + out.stderr
    assert "Selector recommended kafka_heavy (confidence" in out.stdout + out.stderr


awkward_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=60,
).map(lambda s: s + " {{ x }} {% if %} \\ \"'\n é")


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(description=awkward_text, author=awkward_text)
def test_any_answer_text_survives_rendering(
    tmp_path_factory: pytest.TempPathFactory, description: str, author: str
) -> None:
    node = render(
        tmp_path_factory.mktemp("awkward") / "node",
        {**BASE, "description": description, "author_name": author, "variant": "production"},
    )
    for path in (node / "src").rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for path in [*(node / "tests").rglob("*.py")]:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pyproject = tomllib.loads((node / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["authors"][0]["name"] == author
    assert pyproject["project"]["description"] == " ".join(description.split())
    contract = yaml.safe_load(contract_path(node).read_text(encoding="utf-8"))
    assert contract["description"] == description
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text(encoding="utf-8"))
    assert answers["description"] == description
    assert pyproject["tool"]["onex"]["description"] == description
    # Bytes, not text mode: universal newlines would turn a typed "\r" into "\n".
    assert description in (node / "README.md").read_bytes().decode("utf-8")
    node_module = ast.parse((node / "src" / "sample_node" / "node.py").read_text(encoding="utf-8"))
    literals = [n.value for n in ast.walk(node_module) if isinstance(n, ast.Constant)]
    assert description in literals


@pytest.mark.parametrize(
    "description",
    [
        "Orders \u2013 the team\u2019s \u201cfast\u201d path \U0001f680 \u2014 r\xe9sum\xe9",
        # 84 characters, 168 columns: only its width takes the line past ruff's limit.
        "\u65e5\u672c\u8a9e" * 28,
    ],
    ids=["punctuation-and-emoji", "wide-characters"],
)
def test_printable_text_stays_as_typed_and_passes_ruff(tmp_path: Path, description: str) -> None:
    node = render(tmp_path / "node", {**BASE, "description": description})
    node_py = (node / "src" / "sample_node" / "node.py").read_text(encoding="utf-8")
    assert f'DESCRIPTION = "{description}"' in node_py
    ruff = [sys.executable, "-m", "ruff"]
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        checked = subprocess.run(
            [*ruff, *command, "src/sample_node/node.py"],
            cwd=node,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pyproject_strings_are_plain_toml(tmp_path: Path) -> None:
    """Requirements read as written (`>=`, not JSON's `\\u003e=`), and parse back exactly."""
    node = render(
        tmp_path / "node",
        {"node_name": "plain_toml", "variant": "database_heavy", "operations": ["fetch"]},
    )
    text = (node / "pyproject.toml").read_text(encoding="utf-8")
    assert "\\u00" not in text
    assert '    "asyncpg>=0.30",' in text
    project = tomllib.loads(text)["project"]
    assert project["name"] == "plain-toml"
    assert "asyncpg>=0.30" in project["dependencies"]


def test_the_feature_help_fits_an_80_column_terminal_and_lists_every_tag() -> None:
    help_text = vocabulary_help()
    assert max(len(line) for line in help_text.splitlines()) < 80
    listed = set(help_text.replace(",", " ").replace(":", " ").split())
    for entries in default_registry().vocabulary().values():
        assert set(entries) <= listed


@pytest.mark.parametrize("variant", ["minimal", "production", "database_heavy"])
def test_every_module_constant_of_a_node_is_used(tmp_path: Path, variant: str) -> None:
    """No dead constants: each upper-case name a module assigns is read somewhere in the node."""
    node = render(tmp_path / "node", {**BASE, "variant": variant})
    sources = {p: p.read_text(encoding="utf-8") for p in (node / "src").rglob("*.py")}
    sources |= {p: p.read_text(encoding="utf-8") for p in (node / "tests").rglob("*.py")}
    for path, text in sources.items():
        if "integrations" in path.parts or "mixins" in path.parts:
            continue  # copied verbatim from kits and mixins tested in this repo
        for statement in ast.parse(text).body:
            targets = statement.targets if isinstance(statement, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    reads = sum(
                        isinstance(n, ast.Name)
                        and n.id == target.id
                        and isinstance(n.ctx, ast.Load)
                        for source in sources.values()
                        for n in ast.walk(ast.parse(source))
                    )
                    assert reads, f"{path.relative_to(node)}: {target.id} is never read"


def test_the_mixin_questions_disable_the_choices_that_change_nothing() -> None:
    own = default_registry().get("database_heavy").mixins
    lacking = [m for m in default_registry().mixins if m not in own]
    added = list(yaml.safe_load(mixin_choices("database_heavy", "added")).values())
    removed = list(yaml.safe_load(mixin_choices("database_heavy", "removed")).values())
    assert [c["value"] for c in added if not c["validator"]] == lacking
    assert {c["validator"] for c in added if c["value"] in own} == {
        "already in the database_heavy variant"
    }
    assert [c["value"] for c in removed if not c["validator"]] == list(own)
    assert {c["validator"] for c in removed if c["value"] in lacking} == {
        "not in the database_heavy variant"
    }


def test_a_stored_mixin_change_stays_choosable_under_any_variant() -> None:
    choices = yaml.safe_load(mixin_choices("production", "added", ["tracing"]))
    tracing = [c for c in choices.values() if c["value"] == "tracing"]
    assert tracing == [{"value": "tracing", "validator": ""}]


class _Terminal:
    """What the person sees: pexpect hands every byte the prompt writes to a VT100 emulator,
    so redraws and cursor moves end up as they would on a screen."""

    def __init__(self, columns: int, rows: int) -> None:
        self.screen = pyte.Screen(columns, rows)
        self._stream = pyte.Stream(self.screen)

    def write(self, data: str) -> None:
        self._stream.feed(data)

    def flush(self) -> None:
        """pexpect flushes its log file."""

    def choices_under(self, question: str) -> list[str]:
        lines = [line.rstrip() for line in self.screen.display]
        asked = max(i for i, line in enumerate(lines) if question in line)
        return [
            line.strip() for line in lines[asked + 1 :] if line.strip().startswith(CHOICE_MARKS)
        ]


# How questionary draws a choice: enabled (unselected, selected, under the cursor) or disabled.
CHOICE_MARKS = ("○", "●", "» ○", "» ●", "- ")


def _prompt_choices(
    child: pexpect.spawn, terminal: _Terminal, question: str, count: int
) -> list[str]:
    """The `count` choice lines of the multiselect prompt that asks `question`, once drawn."""
    child.expect(re.escape(question))
    deadline = time.monotonic() + 60
    while len(terminal.choices_under(question)) < count and time.monotonic() < deadline:
        with contextlib.suppress(pexpect.TIMEOUT):
            child.read_nonblocking(100_000, timeout=0.5)
    return terminal.choices_under(question)


def test_the_interactive_mixin_prompts_offer_only_changes(tmp_path: Path) -> None:
    """Through the real prompt (a terminal, Copier's questionary): "add" offers the mixins the
    variant lacks, "leave out" only its own; the others are shown disabled with the reason."""
    registry = default_registry()
    own = registry.get("database_heavy").mixins
    lacking = [m for m in registry.mixins if m not in own]
    data = {
        "node_name": "orders",
        "node_type": "effect",
        "description": "Orders.",
        "operations": "[fetch]",
        "features": "[postgres]",
        "variant": "database_heavy",
        "kits_added": "[]",
        "kits_removed": "[]",
    }
    args = ["-m", "copier", "copy", "--trust", "--vcs-ref", "HEAD"]
    for key, value in data.items():
        args += ["--data", f"{key}={value}"]
    terminal = _Terminal(columns=250, rows=60)
    child = pexpect.spawn(
        sys.executable,
        [*args, str(REPO_ROOT), str(tmp_path / "node")],
        encoding="utf-8",
        timeout=120,
        dimensions=(60, 250),
        env={**os.environ, "TERM": "xterm"},
    )
    child.logfile_read = terminal
    count = len(registry.mixins)
    try:
        question = "Mixins to add to the database_heavy variant's own"
        lines = _prompt_choices(child, terminal, question, count)
        offered = [line.split(":")[0].strip("»○ ") for line in lines if "○" in line]
        shown_disabled = [line for line in lines if line.startswith("- ")]
        assert offered == lacking, terminal.screen.display
        assert [line[2:].split(":")[0] for line in shown_disabled] == list(own)
        assert all(
            line.endswith("(already in the database_heavy variant)") for line in shown_disabled
        )
        child.send("\r")  # add none

        question = "Mixins of the database_heavy variant to leave out"
        lines = _prompt_choices(child, terminal, question, count)
        offered = [line.split(":")[0].strip("»○ ") for line in lines if "○" in line]
        shown_disabled = [line for line in lines if line.startswith("- ")]
        assert offered == list(own), terminal.screen.display
        assert [line[2:].split(":")[0] for line in shown_disabled] == lacking
        assert all(line.endswith("(not in the database_heavy variant)") for line in shown_disabled)
    finally:
        child.terminate(force=True)
