"""`python -m selector fleet`: variant analytics over a folder of real rendered nodes made from two
releases of a temporary clone of this template, with an override, a broken answers file and a
foreign Copier project among them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import copier
import pytest
import yaml

from selector.cli import main
from selector.fleet import place_version, scan, template_releases
from tests.conftest import REPO_ROOT

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}
# name -> (release it is rendered from, answers)
NODES: dict[str, tuple[str, dict[str, object]]] = {
    # Chosen against the recommendation (database_heavy).
    "ledger": ("1.0.0", {"node_type": "effect", "features": ["postgres"], "variant": "minimal"}),
    "scorer": ("1.0.0", {"node_type": "compute", "mixins_added": ["retry"]}),
    "stream": (
        "1.1.0",
        {"node_type": "effect", "features": ["kafka"], "mixins_removed": ["health"]},
    ),
    "folder": ("1.1.0", {"node_type": "reducer"}),
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**GIT_IDENTITY, "HOME": str(cwd)},
    ).stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the template clone, the folder of nodes)."""
    root = tmp_path_factory.mktemp("fleet")
    template = root / "template"
    git(root, "clone", "-q", str(REPO_ROOT), str(template))
    git(template, "tag", "1.0.0")
    nodes = root / "nodes"

    def render(release: str) -> None:
        for name, (made_from, answers) in NODES.items():
            if made_from == release:
                copier.run_copy(
                    str(template),
                    str(nodes / "team" / name),
                    data={"node_name": name, **answers},
                    defaults=True,
                    unsafe=True,
                    vcs_ref=release,
                    quiet=True,
                )

    render("1.0.0")
    (template / "README.md").write_text((template / "README.md").read_text() + "\n")
    git(template, "commit", "-q", "-am", "template 1.1.0")
    git(template, "tag", "1.1.0")
    render("1.1.0")

    broken = nodes / "broken"
    shutil.copytree(nodes / "team" / "folder", broken)
    (broken / ".copier-answers.yml").write_text("node_type: [effect\n  variant: {{ oops\n")
    foreign = nodes / "website"
    foreign.mkdir()
    (foreign / ".copier-answers.yml").write_text(
        "_commit: v2.3.0\n_src_path: gh:someone/site-template\nproject_name: site\n"
    )
    # Never scanned: an environment's copy of a node.
    shutil.copytree(nodes / "team" / "ledger", nodes / "team" / ".venv" / "ledger")
    return template, nodes


def run_fleet(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["fleet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def by_name(report: dict[str, object]) -> dict[str, dict[str, object]]:
    nodes = report["nodes"]
    assert isinstance(nodes, list)
    return {node["node_name"]: node for node in nodes}


def test_json_report_counts_versions_changes_and_overrides(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    template, nodes = fleet
    code, out, _ = run_fleet(capsys, str(nodes), "--template", str(template), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["template"]["releases"] == ["1.0.0", "1.1.0"]
    assert report["template"]["newest_release"] == "1.1.0"
    assert report["by_variant"] == {
        "kafka_heavy": {"effect": 1},
        "minimal": {"compute": 1, "effect": 1, "reducer": 1},
    }
    assert report["template_versions"] == {"1.0.0": 2, "1.1.0": 2}
    found = by_name(report)
    assert {name: found[name]["behind"] for name in NODES} == {
        "ledger": 1,
        "scorer": 1,
        "stream": 0,
        "folder": 0,
    }
    assert all(found[name]["release"] for name in NODES)
    assert report["changes"]["minimal"]["mixins_added"] == {"retry": 1}
    assert report["changes"]["kafka_heavy"]["mixins_removed"] == {"health": 1}
    assert report["changes"]["kafka_heavy"]["kits_added"] == {}
    assert report["overrides"] == [
        {
            "path": str(nodes / "team" / "ledger"),
            "node_name": "ledger",
            "node_type": "effect",
            "variant": "minimal",
            "recommended": "database_heavy",
            "features": ["postgres"],
        }
    ]
    assert [node for node in found.values() if node["override"]] == [found["ledger"]]


def test_broken_and_foreign_answers_files_are_reported_and_the_scan_goes_on(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    template, nodes = fleet
    code, out, _ = run_fleet(capsys, str(nodes), "--template", str(template), "--json")
    assert code == 0
    problems = {Path(p["path"]).parent.name: p["reason"] for p in json.loads(out)["problems"]}
    assert set(problems) == {"broken", "website"}
    assert problems["broken"].startswith("not YAML")
    assert "not an ONEX node" in problems["website"]
    assert "gh:someone/site-template" in problems["website"]
    # The broken copy's contract is not counted as a fifth node: its folder has answers.
    assert len(json.loads(out)["nodes"]) == len(NODES)


def test_table_report_names_the_override_with_its_tags_and_the_bad_files(
    fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    template, nodes = fleet
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_fleet(capsys, str(nodes), "--template", str(template))
    assert code == 0
    assert "newest release: 1.1.0" in out
    override_table = out.split("Variants chosen against today's recommendation")[1]
    ledger_row = next(line for line in override_table.splitlines() if "ledger" in line)
    assert [cell.strip() for cell in ledger_row.strip("│ ").split("│")[1:]] == [
        "effect",
        "minimal",
        "database_heavy",
        "postgres",
    ]
    assert "retry" in out
    assert "not YAML" in out
    assert "site-template" in out


def test_a_node_without_answers_is_read_from_its_contract(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    template, nodes = fleet
    node = tmp_path / "stream"
    shutil.copytree(nodes / "team" / "stream", node)
    (node / ".copier-answers.yml").unlink()
    report = scan([tmp_path], template=template)
    assert report.problems == []
    [found] = report.nodes
    assert (found.source, found.node_type, found.variant) == ("contract", "effect", "kafka_heavy")
    assert found.features == ["kafka"]
    assert found.mixins_removed == ["health"]
    assert (found.version.version, found.version.behind) == ("1.1.0", 0)


def test_old_answers_with_a_plain_mixin_list_are_compared_with_the_variants_own(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    template, nodes = fleet
    node = tmp_path / "stream"
    shutil.copytree(nodes / "team" / "stream", node)
    answers_file = node / ".copier-answers.yml"
    answers = yaml.safe_load(answers_file.read_text())
    for key in ("mixins_added", "mixins_removed", "kits_added", "kits_removed"):
        del answers[key]
    answers["mixins"] = ["structured_logging", "metrics", "lifecycle", "tracing"]
    answers_file.write_text(yaml.safe_dump(answers))
    [found] = scan([tmp_path], template=template).nodes
    assert (found.mixins_added, found.mixins_removed) == (["tracing"], ["health"])


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ("- a list\n", "not a YAML mapping"),
        ("node_name: x\nnode_type: effect\n", "variant is missing"),
        ("node_type: effect\nvariant: turbo\n", "unknown variant 'turbo'"),
        ("node_type: gateway\nvariant: minimal\n", "unknown node_type 'gateway'"),
        ("node_type: effect\nvariant: minimal\nfeatures: 3\n", "features is not a list"),
    ],
)
def test_each_malformed_answers_file_is_reported_with_its_reason(
    tmp_path: Path, answers: str, reason: str
) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / ".copier-answers.yml").write_text(answers)
    report = scan([tmp_path], template=tmp_path)
    assert report.nodes == []
    [problem] = report.problems
    assert reason in problem.reason


def test_without_git_or_tags_the_newest_release_is_unknown(tmp_path: Path) -> None:
    assert template_releases(tmp_path).releases is None
    git(tmp_path, "init", "-q")
    assert template_releases(tmp_path).releases is None
    untagged = template_releases(tmp_path)
    assert place_version("1.0.0", untagged).behind is None


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository tagged with three releases, a release candidate and a word."""
    repository = tmp_path_factory.mktemp("tagged")
    git(repository, "init", "-q")
    for tag in ("1.0.0", "1.1.0", "1.2.0", "2.0.0rc1", "nightly"):
        git(repository, "commit", "-q", "--allow-empty", "-m", tag)
        git(repository, "tag", tag)
    return repository


@pytest.mark.parametrize(
    ("commit", "release", "behind"),
    [
        ("1.0.0", True, 2),
        ("1.2.0", True, 0),
        ("1.0.0-3-gdf7347e", False, 2),  # three commits after 1.0.0
        ("0.0.0.post38.dev0+df7347e", False, None),
        ("df7347e", False, None),
        (None, False, None),
    ],
)
def test_a_version_is_placed_among_the_releases(
    tagged: Path, commit: str | None, release: bool, behind: int | None
) -> None:
    releases = template_releases(tagged)
    assert releases.releases == ("1.0.0", "1.1.0", "1.2.0")
    placed = place_version(commit, releases)
    assert (placed.release, placed.behind) == (release, behind)


@pytest.mark.parametrize(
    "make_args", [lambda d: [str(d / "nope")], lambda d: [str(d), "--template", str(d / "nope")]]
)
def test_a_missing_folder_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_args: Callable[[Path], list[str]],
) -> None:
    code, _, err = run_fleet(capsys, *make_args(tmp_path))
    assert code == 2
    assert "no such folder" in err


def test_by_default_the_releases_are_this_repositorys_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_fleet(capsys, str(tmp_path), "--json")
    assert code == 0
    template = json.loads(out)["template"]
    assert template["path"] == str(REPO_ROOT.resolve())
    tags = template_releases(REPO_ROOT).releases
    assert template["releases"] == (list(tags) if tags is not None else None)
