"""`copier update` of a rendered node: the person's code survives and the new template version
renders with its own selector (the extension must not reuse modules imported by the old one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import copier
import yaml

from tests.conftest import REPO_ROOT


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


def update(node: Path, ref: str) -> None:
    copier.run_update(
        str(node), defaults=True, unsafe=True, overwrite=True, vcs_ref=ref, quiet=True
    )


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
    contract = yaml.safe_load((node / "contract.yaml").read_text())
    assert contract["variant"]["name"] == "search_heavy"
    assert contract["variant"]["recommended"] == "search_heavy"
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

    contract = yaml.safe_load((node / "contract.yaml").read_text())
    assert contract["variant"]["selector_version"] == "1.1.0-test"
    assert contract["variant"]["name"] == "standard"
    assert "MARKER = 1" in handlers.read_text()
    assert (node / "NOTES.md").read_text() == "my notes\n"
    assert "Upgraded template section." in (node / "README.md").read_text()
    answers = yaml.safe_load((node / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "1.1.0"
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
