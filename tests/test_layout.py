"""The template's layout: kits are data. Shared template files name no kit, each kit brings its
own fragments and files, paths stay portable, and the selector stays plain Python."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selector import default_registry
from selector.models import NodeType
from selector.plan import example_receives_resources
from tests.conftest import REPO_ROOT
from tests.render_helpers import KIT_SUPPORT, kit_modules

REGISTRY = default_registry()
KITS = sorted(REGISTRY.integrations)
TEMPLATE = REPO_ROOT / "template"
PARTIALS = REPO_ROOT / "partials"
KIT_PARTIALS = PARTIALS / "kits"
INTEGRATIONS = REPO_ROOT / "integrations"
NODE_INTEGRATIONS = TEMPLATE / "src" / "{{node_name}}" / "{% if kits %}integrations{% endif %}"
KIT_FRAGMENTS = ("settings.py.jinja", "resources.py.jinja", "readme.md.jinja")
# Kits catalogued before the template copies them: each entry fails until its files land, and
# then fails as an unexpected pass until it is removed from here.
NOT_YET_IN_TEMPLATE: dict[str, str] = {}
# Shared files that still name kits: each fails until its literals move into
# partials/kits/<kit>/ (or the file becomes a kit's own), then fails as an unexpected pass until
# it leaves this table.
SHARED_FILES_NAMING_KITS: dict[str, str] = {}
# Phrases spelled like a kit's name that mean something else.
NOT_KIT_NAMES = ('scope["type"] != "http"',)  # the ASGI scope type
WINDOWS_REFUSED = re.compile(r'[<>:"|?*\x00-\x1f]')
MAX_PATH_PART = 80


def _kit_params(kits: list[str]) -> list[object]:
    return [
        pytest.param(
            kit,
            marks=pytest.mark.xfail(strict=True, reason=NOT_YET_IN_TEMPLATE[kit]),
        )
        if kit in NOT_YET_IN_TEMPLATE
        else kit
        for kit in kits
    ]


def _word(kit: str) -> str:
    return rf"(?<![A-Za-z0-9_]){re.escape(kit)}(?![A-Za-z0-9_])"


# A kit's name as a string literal, an `integrations.<kit>` module or a `<kit>.py` file.
KIT_LITERAL = re.compile(
    "|".join(
        rf"""'{re.escape(k)}'|"{re.escape(k)}"|\bintegrations\.{re.escape(k)}\b|{_word(k)}\.py\b"""
        for k in KITS
    )
)
# A path that mentions a kit belongs to that kit; so does one that tests a capability
# (`'<capability>' in provides`) only kits provide.
KIT_IN_PATH = re.compile("|".join(_word(k) for k in KITS))
KIT_CAPABILITY_IN_PATH = re.compile(r"'(\w+)' in provides")
CAPABILITIES = {
    capability
    for spec in REGISTRY.integrations.values()
    for capabilities in spec.provides.values()
    for capability in capabilities
}


def _is_a_kits_own(path: str) -> bool:
    return bool(KIT_IN_PATH.search(path)) or any(
        capability in CAPABILITIES for capability in KIT_CAPABILITY_IN_PATH.findall(path)
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def shared_template_files() -> list[Path]:
    """Files every node gets whatever its kits: the template's files whose path names no kit,
    and the partials that are not a kit's own (partials/kits/<kit>/)."""
    template = [p for p in _files(TEMPLATE) if not _is_a_kits_own(str(p.relative_to(REPO_ROOT)))]
    partials = [p for p in _files(PARTIALS) if KIT_PARTIALS not in p.parents]
    return template + partials


def _relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _shared_file_params() -> list[object]:
    params = []
    for path in shared_template_files():
        name = _relative(path)
        reason = SHARED_FILES_NAMING_KITS.get(name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path, id=name, marks=marks))
    return params


def _without_phrases_that_name_no_kit(line: str) -> str:
    for phrase in NOT_KIT_NAMES:
        line = line.replace(phrase, "")
    return line


@pytest.mark.parametrize("path", _shared_file_params())
def test_shared_template_files_name_no_kit(path: Path) -> None:
    found = [
        f"{number}: {match.group(0)}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in KIT_LITERAL.finditer(_without_phrases_that_name_no_kit(line))
    ]
    assert found == []


def test_the_kit_literal_check_sees_every_form() -> None:
    assert KITS
    for kit in KITS:
        for text in (f"'{kit}'", f'"{kit}"', f"from integrations.{kit} import", f"{kit}.py"):
            assert KIT_LITERAL.search(text), text
    assert not KIT_LITERAL.search("test_kafka.py kafka_bootstrap 'kits' .github/workflows")
    shared = {_relative(p) for p in shared_template_files()}
    assert set(SHARED_FILES_NAMING_KITS) <= shared
    assert _without_phrases_that_name_no_kit('if scope["type"] != "http":') == "if :"
    assert "template/src/{{node_name}}/resources.py.jinja" in shared
    assert "partials/handlers/generic.py.jinja" in shared
    assert not any("partials/kits/" in name or "'kafka' in kits" in name for name in shared)


def _path_parts() -> list[str]:
    return sorted({part for p in TEMPLATE.rglob("*") for part in p.relative_to(TEMPLATE).parts})


@pytest.mark.parametrize("part", _path_parts())
def test_template_path_parts_are_portable(part: str) -> None:
    """Windows refuses these characters in file names; function calls in a path re-run on every
    file, and long parts push past Windows' path limit. `{{`, `}}`, `{%` and `%}` are fine."""
    assert "(" not in part
    assert not WINDOWS_REFUSED.search(part)
    assert not part.endswith((" ", "."))
    assert len(part) <= MAX_PATH_PART


def test_template_path_checks_refuse_what_windows_refuses() -> None:
    for bad in ("a|b", "a:b", "a<b", 'a"b', "a?b", "a*b", "a\x01b"):
        assert WINDOWS_REFUSED.search(bad), bad
    assert not WINDOWS_REFUSED.search("{% if 'kafka' in kits %}kafka.py{% endif %}.jinja")


def _selector_modules() -> list[Path]:
    return sorted((REPO_ROOT / "selector").rglob("*.py"))


@pytest.mark.parametrize("path", _selector_modules(), ids=_relative)
def test_selector_module_imports_neither_copier_nor_jinja2(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported & {"copier", "jinja2", "copier_template_extensions"} == set()


def test_importing_the_selector_cli_loads_neither_copier_nor_jinja2() -> None:
    check = (
        "import selector.cli, sys; "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('copier', 'jinja2')); "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kit", _kit_params(KITS))
def test_every_kit_has_its_fragments(kit: str) -> None:
    folder = KIT_PARTIALS / kit
    missing = [name for name in KIT_FRAGMENTS if not (folder / name).is_file()]
    for node_type in REGISTRY.integrations[kit].examples:
        for stem in ("handlers", "handler_tests"):
            name = f"{stem}_{node_type.value}.py.jinja"
            if not (folder / name).is_file():
                missing.append(name)
    assert missing == []


@pytest.mark.parametrize("kit", KITS)
def test_every_example_test_file_of_a_kit_is_in_the_template(kit: str) -> None:
    for files in REGISTRY.integrations[kit].examples.values():
        for name in files:
            assert (
                TEMPLATE / "tests" / f"{{% if '{kit}' in examples %}}{name}{{% endif %}}.jinja"
            ).is_file(), name


def test_example_test_files_in_the_template_are_a_kit_s_examples() -> None:
    pattern = re.compile(r"^\{% if '(\w+)' in examples %\}(.+)\{% endif %\}\.jinja$")
    found = [m.groups() for p in _files(TEMPLATE) if (m := pattern.match(p.name))]
    assert found
    for kit, name in found:
        assert kit in REGISTRY.integrations, kit
        listed = {f for files in REGISTRY.integrations[kit].examples.values() for f in files}
        assert name in listed, f"{kit}: {name}"


def test_kit_conditions_in_paths_name_catalogue_kits() -> None:
    condition = re.compile(r"\{% if '(\w+)' in kits %\}")
    named = {kit for p in TEMPLATE.rglob("*") for kit in condition.findall(p.name)}
    assert named
    assert named - set(KITS) == set()


@pytest.mark.parametrize("kit", _kit_params(KITS))
def test_every_kit_module_is_copied_by_the_template(kit: str) -> None:
    """Each module of the kit has a template file of the same place that includes it (a module
    added to a package kit and forgotten here would be missing from every node)."""
    sources = kit_modules(INTEGRATIONS, kit)
    assert sources
    condition = f"{{% if '{kit}' in kits %}}"
    for source in sources:
        relative = source.relative_to(INTEGRATIONS)
        if len(relative.parts) == 1:
            copy = NODE_INTEGRATIONS / f"{condition}{relative.name}{{% endif %}}.jinja"
        else:
            copy = NODE_INTEGRATIONS / f"{condition}{kit}{{% endif %}}" / f"{relative.name}.jinja"
        assert copy.is_file(), _relative(copy)
        assert f"{{% include 'integrations/{relative.as_posix()}' %}}" in copy.read_text()


def test_support_is_copied_into_every_node_with_a_kit() -> None:
    copy = NODE_INTEGRATIONS / f"{KIT_SUPPORT}.py.jinja"
    assert f"{{% include 'integrations/{KIT_SUPPORT}.py' %}}" in copy.read_text(encoding="utf-8")


FOLLOWING_KITS = [k for k in KITS if REGISTRY.integrations[k].follows_up]


def test_some_kits_follow_up_others() -> None:
    assert FOLLOWING_KITS


@pytest.mark.parametrize("kit", FOLLOWING_KITS)
def test_every_kit_that_follows_up_has_its_fragment_and_test_files(kit: str) -> None:
    fragment = (KIT_PARTIALS / kit / "follow_up.py.jinja").read_text(encoding="utf-8")
    assert "macro after(op)" in fragment
    assert "macro about()" in fragment
    for files in REGISTRY.integrations[kit].follows_up.values():
        assert files
        for name in files:
            assert (
                TEMPLATE / "tests" / f"{{% if '{kit}' in follow_ups %}}{name}{{% endif %}}.jinja"
            ).is_file(), name


def test_follow_up_test_files_in_the_template_are_a_kit_s_follow_ups() -> None:
    pattern = re.compile(r"^\{% if '(\w+)' in follow_ups %\}(.+)\{% endif %\}\.jinja$")
    found = [m.groups() for p in _files(TEMPLATE) if (m := pattern.match(p.name))]
    assert found
    for kit, name in found:
        listed = {f for files in REGISTRY.integrations[kit].follows_up.values() for f in files}
        assert name in listed, f"{kit}: {name}"


def _fragment_and_what_it_builds_on(path: Path) -> str:
    """The fragment's text with that of the fragments it extends or includes."""
    text = path.read_text(encoding="utf-8")
    for other in re.findall(r"\{%-? (?:extends|include) '(partials/kits/[^']+)'", text):
        text += _fragment_and_what_it_builds_on(REPO_ROOT / other)
    return text


@pytest.mark.parametrize(
    ("kit", "node_type"),
    [
        (kit, node_type)
        for kit in KITS
        for node_type in REGISTRY.integrations[kit].examples
        if example_receives_resources(kit, node_type, REGISTRY)
    ],
)
def test_every_example_that_can_reach_other_kits_runs_their_follow_ups(
    kit: str, node_type: NodeType
) -> None:
    fragment = KIT_PARTIALS / kit / f"handlers_{node_type.value}.py.jinja"
    text = _fragment_and_what_it_builds_on(fragment)
    assert "follow.returning(op)" in text
    assert "follow.about()" in text
