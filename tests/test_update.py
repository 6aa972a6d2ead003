"""`copier update` of a rendered node: the person's code survives and the new template version
renders with its own selector (the extension must not reuse modules imported by the old one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import copier
import pytest
import yaml

from selector import default_registry
from tests.conftest import REPO_ROOT
from tests.render_helpers import KIT_SUPPORT, shipped_kits

REGISTRY = default_registry()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(cwd),
        },
    ).stdout


def snapshot_template(target: Path) -> Path:
    """A git repository holding this template's working tree, tagged 1.0.0."""
    target.mkdir(parents=True, exist_ok=True)
    tracked = git(REPO_ROOT, "ls-files", "--cached", "--others", "--exclude-standard")
    for name in tracked.splitlines():
        source = REPO_ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "template 1.0.0")
    git(target, "tag", "1.0.0")
    return target


def scaffold(template: Path, node: Path, answers: dict[str, object], ref: str) -> Path:
    copier.run_copy(
        str(template), str(node), data=answers, defaults=True, unsafe=True, vcs_ref=ref, quiet=True
    )
    git(node, "init", "-q", "-b", "main")
    git(node, "add", "-A")
    git(node, "commit", "-q", "-m", "scaffold")
    return node


def run_node_tests(node: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=node,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(node / "src")},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout


def release(template: Path, tag: str) -> None:
    """Commit every change in the template copy and tag it."""
    git(template, "commit", "-q", "-am", f"template {tag}")
    git(template, "tag", tag)


def update(node: Path, ref: str, data: dict[str, object] | None = None) -> None:
    copier.run_update(
        str(node),
        data=data or {},
        defaults=True,
        unsafe=True,
        overwrite=True,
        vcs_ref=ref,
        quiet=True,
    )


def shipped(node: Path, name: str, folder: str) -> set[str]:
    """The mixins or kits a node carries (a kit may be a package); the support module every
    node with a kit gets is no kit, and is there exactly when a kit is."""
    directory = node / "src" / name / folder
    if folder == "integrations":
        kits = shipped_kits(directory)
        assert (directory / f"{KIT_SUPPORT}.py").is_file() == bool(kits)
        return kits
    return {p.stem for p in directory.glob("*.py")} - {"__init__"}


def commit_all(node: Path, message: str) -> None:
    git(node, "add", "-A")
    git(node, "commit", "-q", "-m", message)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_a_custom_variant_is_offered_recommended_and_rendered(tmp_path: Path) -> None:
    template = tmp_path / "template"
    example = REPO_ROOT / "examples" / "custom_variant" / "search_heavy.yaml"
    snapshot_template(template)
    shutil.copy2(example, template / "selector" / "variants" / "search_heavy.yaml")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "add search_heavy")
    node = tmp_path / "node"
    copier.run_copy(
        str(template),
        str(node),
        data={"node_name": "finder", "features": ["Elasticsearch", "relevance"]},
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    contract = yaml.safe_load((node / "src" / "finder" / "contract.yaml").read_text())
    assert contract["annotations"]["variant"]["name"] == "search_heavy"
    assert contract["annotations"]["variant"]["recommended"] == "search_heavy"
    assert contract["performance"]["single_operation_max_ms"] == 3000
    shipped = {p.stem for p in (node / "src" / "finder" / "mixins").glob("*.py")}
    assert shipped == {"__init__", "structured_logging", "metrics", "health", "retry"}


def test_update_keeps_the_person_code_and_uses_the_new_selector(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {"node_name": "kept_node", "variant": "standard", "operations": ["fetch"]}
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")

    handlers = node / "src" / "kept_node" / "handlers.py"
    append(handlers, "\n\n# the person's own logic\nMARKER = 1\n")
    (node / "NOTES.md").write_text("my notes\n")
    git(node, "add", "-A")
    git(node, "commit", "-q", "-m", "my work")

    version_file = template / "selector" / "version.py"
    version_file.write_text(version_file.read_text().replace('"1.0.0"', '"1.1.0-test"'))
    append(template / "template" / "README.md.jinja", "\nUpgraded template section.\n")
    release(template, "1.1.0")
    update(node, "1.1.0")

    contract = yaml.safe_load((node / "src" / "kept_node" / "contract.yaml").read_text())
    assert contract["annotations"]["variant"]["selector_version"] == "1.1.0-test"
    assert contract["annotations"]["variant"]["name"] == "standard"
    assert "MARKER = 1" in handlers.read_text()
    assert (node / "NOTES.md").read_text() == "my notes\n"
    assert "Upgraded template section." in (node / "README.md").read_text()
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "1.1.0"
    assert answers["_onex_selector_version"] == "1.1.0-test"
    assert answers["variant"] == "standard"
    assert not list(node.rglob("*.rej"))
    run_node_tests(node)


def test_update_across_two_tags_with_a_conflicting_edit(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    node = scaffold(
        template, tmp_path / "node", {"node_name": "steady", "variant": "standard"}, "1.0.0"
    )
    errors = node / "src" / "steady" / "errors.py"
    errors.write_text(errors.read_text().replace('code = "timeout"', 'code = "too_slow"'))
    git(node, "commit", "-q", "-am", "local tweak of a template-owned file")

    template_errors = template / "template" / "src" / "{{node_name}}" / "errors.py.jinja"
    template_errors.write_text(
        template_errors.read_text().replace('code = "timeout"', 'code = "deadline_exceeded"')
    )
    release(template, "1.1.0")
    append(template / "template" / "README.md.jinja", "\nA 1.2.0 section.\n")
    release(template, "1.2.0")
    update(node, "1.2.0")
    text = errors.read_text()
    # Both sides changed the same line: Copier leaves inline markers with both versions.
    assert "<<<<<<<" in text
    assert 'code = "too_slow"' in text
    assert 'code = "deadline_exceeded"' in text
    assert "A 1.2.0 section." in (node / "README.md").read_text()
    assert yaml.safe_load((node / ".copier-answers.yml").read_text())["_commit"] == "1.2.0"
    assert not list(node.rglob("*.rej"))


def test_switching_standard_to_production_keeps_the_person_choices(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {
        "node_name": "grower",
        "variant": "standard",
        "operations": ["fetch"],
        "mixins_removed": ["health"],
    }
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    handlers = node / "src" / "grower" / "handlers.py"
    append(handlers, "\n\n# the person's own logic\nMARKER = 1\n")
    (node / "NOTES.md").write_text("my notes\n")
    commit_all(node, "my work")

    update(node, "1.0.0", {"variant": "production"})

    production = set(REGISTRY.get("production").mixins)
    # The variant's mixins, still without the one the person removed.
    assert shipped(node, "grower", "mixins") == production - {"health"}
    stored = yaml.safe_load((node / ".copier-answers.yml").read_text())
    assert (stored["variant"], stored["mixins_removed"]) == ("production", ["health"])
    assert "MARKER = 1" in handlers.read_text()
    assert (node / "NOTES.md").read_text() == "my notes\n"
    assert not list(node.rglob("*.rej"))
    run_node_tests(node)


def test_switching_minimal_to_database_heavy_keeps_the_handlers(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {"node_name": "keeper", "variant": "minimal", "operations": ["store"]}
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    handlers = node / "src" / "keeper" / "handlers.py"
    append(handlers, "\n\n# the person's own logic\nMARKER = 1\n")
    before = handlers.read_text()
    commit_all(node, "my work")

    update(node, "1.0.0", {"variant": "database_heavy"})

    assert handlers.read_text() == before
    assert shipped(node, "keeper", "integrations") == {"postgres"}
    assert (node / "src" / "keeper" / "migrations" / "0001_initial.sql").exists()
    assert "self.database = Database(" in (node / "src" / "keeper" / "resources.py").read_text()
    # Example tests of handlers the person never had are not added by an update.
    assert not (node / "tests" / "test_handlers_postgres.py").exists()
    assert (node / "tests" / "test_postgres.py").exists()
    assert not list(node.rglob("*.rej"))
    run_node_tests(node)


def test_switching_analytics_to_kafka_heavy_reducer(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {
        "node_name": "folder",
        "node_type": "reducer",
        "variant": "analytics",
        "operations": ["fold"],
    }
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    handlers = node / "src" / "folder" / "handlers.py"
    append(handlers, "\n\n# the person's own logic\nMARKER = 1\n")
    commit_all(node, "my work")

    update(node, "1.0.0", {"variant": "kafka_heavy"})

    assert "MARKER = 1" in handlers.read_text()
    assert shipped(node, "folder", "integrations") == {"kafka"}
    assert "async def consume(" in (node / "src" / "folder" / "node.py").read_text()
    assert not list(node.rglob("*.rej"))
    run_node_tests(node)


def test_adding_and_removing_a_kit_keeps_the_handlers(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {
        "node_name": "ledger",
        "node_type": "effect",
        "variant": "database_heavy",
        "operations": ["record"],
    }
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    assert yaml.safe_load((node / ".copier-answers.yml").read_text())["kits_added"] == []
    handlers = node / "src" / "ledger" / "handlers.py"
    append(handlers, "\n\n# the person's own logic\nMARKER = 1\n")
    commit_all(node, "my work")

    update(node, "1.0.0", {"kits_added": ["kafka"]})

    assert "MARKER = 1" in handlers.read_text()
    assert shipped(node, "ledger", "integrations") == {"postgres", "kafka"}
    assert "self.producer = Producer(" in (node / "src" / "ledger" / "resources.py").read_text()
    assert "kafka:" in (node / "docker-compose.yml").read_text()
    assert yaml.safe_load((node / ".copier-answers.yml").read_text())["kits_added"] == ["kafka"]
    assert not list(node.rglob("*.rej"))
    run_node_tests(node)
    commit_all(node, "with kafka")

    # A switch to a variant that has the kit and back keeps the person's addition.
    update(node, "1.0.0", {"variant": "kafka_heavy"})
    assert yaml.safe_load((node / ".copier-answers.yml").read_text())["kits_added"] == ["kafka"]
    commit_all(node, "kafka_heavy")
    update(node, "1.0.0", {"variant": "database_heavy"})
    assert shipped(node, "ledger", "integrations") == {"postgres", "kafka"}
    assert "MARKER = 1" in handlers.read_text()
    commit_all(node, "database_heavy again")

    update(node, "1.0.0", {"kits_added": []})

    assert "MARKER = 1" in handlers.read_text()
    assert shipped(node, "ledger", "integrations") == {"postgres"}
    assert not (node / "src" / "ledger" / "integrations" / "kafka").exists()
    assert "Producer" not in (node / "src" / "ledger" / "resources.py").read_text()


def test_a_dropped_mixin_is_kept_where_the_person_edited_it(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {"node_name": "shrinker", "variant": "production", "operations": ["fetch"]}
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    mixins = node / "src" / "shrinker" / "mixins"
    append(mixins / "tracing.py", "\n\n# the person's tweak\nTWEAK = 1\n")
    commit_all(node, "tweak a mixin")
    dropped = set(REGISTRY.get("production").mixins) - set(REGISTRY.get("standard").mixins)
    assert {"tracing", "events"} <= dropped

    update(node, "1.0.0", {"variant": "standard"})

    # The edited one stays (and the update says so); the untouched ones go.
    assert "TWEAK = 1" in (mixins / "tracing.py").read_text()
    assert not (mixins / "events.py").exists()
    assert shipped(node, "shrinker", "mixins") == set(REGISTRY.get("standard").mixins) | {"tracing"}


def test_an_edited_module_of_a_dropped_package_kit_is_kept(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    template = snapshot_template(tmp_path / "template")
    answers = {"node_name": "dropper", "variant": "kafka_heavy", "operations": ["send"]}
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    integrations = node / "src" / "dropper" / "integrations"
    assert shipped(node, "dropper", "integrations") == {"kafka"}
    edited = integrations / "kafka" / "producer.py"
    append(edited, "\n\n# the person's tweak\nTWEAK = 1\n")
    commit_all(node, "tweak a module of the kafka package")
    capfd.readouterr()

    update(node, "1.0.0", {"variant": "standard"})

    # Only the edited module stays, where it was; the kit's other modules, the package's
    # __init__, the shared support module and the integrations package itself go.
    left = sorted(p.relative_to(integrations).as_posix() for p in integrations.rglob("*.py"))
    assert left == ["kafka/producer.py"]
    assert "TWEAK = 1" in edited.read_text()
    assert f"kept {edited.relative_to(node).as_posix()}: " in capfd.readouterr().out
    assert not list(node.rglob("*.rej"))


def test_nodes_from_before_0_2_0_get_their_mixins_answer_migrated(tmp_path: Path) -> None:
    template = snapshot_template(tmp_path / "template")
    config = template / "copier.yml"
    current = config.read_text()
    # The 0.1.0 questionnaire asked for the mixins themselves, and derived nothing from them.
    start = current.index("mixins_added:")
    end = current.index("author_name:")
    derived = current.index("# The variant's mixins with the changes above")
    derived_end = current.index("# The kits' catalogue entries")
    old = current[:start] + OLD_MIXINS_QUESTION + current[end:derived] + current[derived_end:]
    config.write_text(old)
    git(template, "commit", "-q", "-am", "the 0.1.0 questionnaire: a stored mixins list")
    git(template, "tag", "0.1.0")
    chosen = ["structured_logging", "metrics", "tracing"]
    answers = {"node_name": "elder", "variant": "standard", "mixins": chosen}
    node = scaffold(template, tmp_path / "node", answers, "0.1.0")
    assert yaml.safe_load((node / ".copier-answers.yml").read_text())["mixins"] == chosen

    config.write_text(current)
    release(template, "0.2.0")
    update(node, "0.2.0")

    stored = yaml.safe_load((node / ".copier-answers.yml").read_text())
    own = REGISTRY.get("standard").mixins
    assert "mixins" not in stored
    assert stored["mixins_added"] == [m for m in chosen if m not in own]
    assert stored["mixins_removed"] == [m for m in own if m not in chosen]
    assert shipped(node, "elder", "mixins") == set(chosen)
    run_node_tests(node)


OLD_MIXINS_QUESTION = """mixins:
  type: str
  multiselect: true
  help: Mixins to include (defaults to the chosen variant's suggestions)
  default: "{{ onex.variant_spec(variant).mixins | tojson }}"
  choices: "{{ onex.mixin_choices() }}"

"""


def template_at(commit: str, target: Path, tag: str) -> Path:
    """A git repository holding this template as it was at `commit`, tagged `tag`."""
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"this test needs commit {commit} in the clone (no shallow clone): "
        f"{archive.stderr.decode()}"
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", f"template {tag}")
    git(target, "tag", tag)
    return target


def replace_with_working_tree(template: Path) -> None:
    """Stage this template's working tree in place of `template`'s files."""
    git(template, "rm", "-q", "-r", ".")
    for name in git(
        REPO_ROOT, "ls-files", "--cached", "--others", "--exclude-standard"
    ).splitlines():
        source = REPO_ROOT / name
        if source.is_file():
            destination = template / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    git(template, "add", "-A")


# The last release before the contract moved into the package (tagged 0.3.0 when it landed).
BEFORE_PACKAGED_CONTRACT = "bffbe38a75e3e8e92f37498314824b03afcc4e53"


def test_a_node_from_before_the_packaged_contract_gets_it_and_keeps_its_handlers(
    tmp_path: Path,
) -> None:
    template = template_at(BEFORE_PACKAGED_CONTRACT, tmp_path / "template", "0.3.0")
    answers = {"node_name": "ledger", "node_type": "effect", "variant": "database_heavy"}
    node = scaffold(template, tmp_path / "node", answers, "0.3.0")
    assert (node / "contract.yaml").exists()
    handlers = node / "src" / "ledger" / "handlers.py"
    append(handlers, "\n\n# the person's own code\n")
    commit_all(node, "the person's work")
    edited = handlers.read_text()

    replace_with_working_tree(template)
    release(template, "0.4.0")
    update(node, "0.4.0")

    assert not (node / "contract.yaml").exists()
    contract = yaml.safe_load((node / "src" / "ledger" / "contract.yaml").read_text())
    assert contract["handler"]["class"] == "LedgerOnexAdapter"
    assert (node / "src" / "ledger" / "handler.py").exists()
    assert handlers.read_text() == edited
    pyproject = (node / "pyproject.toml").read_text()
    assert '[project.entry-points."onex.nodes"]' in pyproject
    run_node_tests(node)


# The last commit whose workflow handlers took an in-memory `Steps` they did not use.
BEFORE_STEPLESS_WORKFLOW = "a54d698bfd6927d9d61a1462022b231be1db3b1d"


def test_workflow_handlers_written_with_steps_lose_them_on_update(tmp_path: Path) -> None:
    template = template_at(BEFORE_STEPLESS_WORKFLOW, tmp_path / "template", "0.4.0")
    answers = {
        "node_name": "saga",
        "node_type": "orchestrator",
        "variant": "workflow",
        "operations": ["place_order"],
    }
    node = scaffold(template, tmp_path / "node", answers, "0.4.0")
    package = node / "src" / "saga"
    handlers = package / "handlers.py"
    assert "    steps: Steps,\n" in handlers.read_text()
    assert (package / "orchestration.py").exists()
    append(handlers, "\n\n# the person's own code\n")
    commit_all(node, "the person's work")

    replace_with_working_tree(template)
    release(template, "0.5.0")
    update(node, "0.5.0")

    assert not (package / "orchestration.py").exists()
    text = handlers.read_text()
    assert "orchestration" not in text
    assert "steps: Steps" not in text
    assert "del steps" not in text
    assert text.endswith("# the person's own code\n")
    assert "handlers.place_order(request, self.resources)" in (package / "node.py").read_text()
    run_node_tests(node)


def test_a_mixin_change_survives_a_switch_to_a_variant_that_already_makes_it(
    tmp_path: Path,
) -> None:
    """The mixin questions disable the choices that change nothing, except the stored ones:
    a disabled stored choice would be dropped, and the change lost on the way back."""
    template = snapshot_template(tmp_path / "template")
    answers = {
        "node_name": "ledger",
        "node_type": "effect",
        "variant": "database_heavy",
        "mixins_added": ["tracing"],
        "mixins_removed": ["health"],
    }
    node = scaffold(template, tmp_path / "node", answers, "1.0.0")
    stored = node / ".copier-answers.yml"

    update(node, "1.0.0", {"variant": "production"})  # has tracing and health
    after_switch = yaml.safe_load(stored.read_text())
    assert (after_switch["mixins_added"], after_switch["mixins_removed"]) == (
        ["tracing"],
        ["health"],
    )
    assert "tracing" in shipped(node, "ledger", "mixins")
    assert "health" not in shipped(node, "ledger", "mixins")
    commit_all(node, "production")

    update(node, "1.0.0", {"variant": "database_heavy"})
    back = yaml.safe_load(stored.read_text())
    assert (back["mixins_added"], back["mixins_removed"]) == (["tracing"], ["health"])
    assert shipped(node, "ledger", "mixins") == {
        "structured_logging",
        "metrics",
        "circuit_breaker",
        "lifecycle",
        "tracing",
    }
