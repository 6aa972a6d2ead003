"""The answer migrations on their own (the end-to-end runs are in test_update.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from extensions.questionnaire import effective_mixins
from migrations.mixins_to_deltas import migrate
from migrations.workflow_handlers_without_steps import main as without_steps
from selector.validation import mixin_delta_problem

STANDARD = ["structured_logging", "metrics", "health"]


def test_a_stored_list_becomes_changes_to_the_variant_that_give_the_same_mixins() -> None:
    answers: dict[str, object] = {"variant": "standard", "mixins": ["metrics", "tracing"]}
    migrated = migrate(answers, STANDARD)
    assert "mixins" not in migrated
    assert migrated["mixins_added"] == ["tracing"]
    assert migrated["mixins_removed"] == ["structured_logging", "health"]
    assert effective_mixins("standard", ["tracing"], ["structured_logging", "health"]) == [
        "metrics",
        "tracing",
    ]


def test_migrated_answers_are_left_alone() -> None:
    answers: dict[str, object] = {"variant": "standard", "mixins_added": [], "mixins_removed": []}
    assert migrate(dict(answers), STANDARD) == answers


def test_effective_mixins_follow_the_variant_and_keep_the_changes() -> None:
    assert effective_mixins("minimal", [], []) == []
    production = effective_mixins("production", [], ["health"])
    assert "health" not in production
    assert "tracing" in production
    # Adding what the variant has anyway, or removing what it lacks, changes nothing.
    assert effective_mixins("standard", ["metrics"], ["tracing"]) == effective_mixins(
        "standard", [], []
    )


def test_mixin_changes_are_validated_by_name_and_against_the_variants_kits() -> None:
    assert mixin_delta_problem(["tracing"], "mixins_added", "standard") == ""
    assert "'teleport' is not a mixin" in mixin_delta_problem(
        ["teleport"], "mixins_added", "standard"
    )
    assert "must be a list" in mixin_delta_problem("tracing", "mixins_removed", "standard")
    problem = mixin_delta_problem(["circuit_breaker"], "mixins_removed", "api_heavy")
    assert "mixins_removed" in problem
    assert "http kit needs circuit_breaker" in problem


def _workflow_node(root: Path, handlers: str) -> Path:
    package = root / "src" / "saga"
    (package / "integrations").mkdir(parents=True)
    (package / "integrations" / "workflow.py").write_text("")
    (package / "handlers.py").write_text(handlers)
    return package / "handlers.py"


OLD_HANDLER = """from saga.orchestration import Steps


async def place_order(
    request: object,
    steps: Steps,
    resources: object,
) -> object:
    del steps  # the workflow engine records the steps, durably
{body}"""


def test_the_template_written_steps_lines_go_and_the_rest_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handlers = _workflow_node(tmp_path, OLD_HANDLER.format(body="    return request\n"))
    monkeypatch.chdir(tmp_path)
    assert without_steps("saga") == 0
    assert handlers.read_text() == (
        "\n\nasync def place_order(\n    request: object,\n    resources: object,\n"
        ") -> object:\n    return request\n"
    )
    assert "still names" not in capsys.readouterr().out
    assert without_steps("saga") == 0  # a second run finds nothing to do
    assert "Steps" not in handlers.read_text()


def test_code_of_the_person_that_uses_steps_is_named_not_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '    await steps.run("charge", charge)\n    return request\n'
    handlers = _workflow_node(tmp_path, OLD_HANDLER.format(body=body))
    monkeypatch.chdir(tmp_path)
    assert without_steps("saga") == 0
    assert body in handlers.read_text()
    assert "still names `steps`" in capsys.readouterr().out
