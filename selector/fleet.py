"""Variant analytics over a fleet of rendered nodes (``python -m selector fleet DIR...``).

Reads each node's ``.copier-answers.yml`` (and, for a node whose answers file is gone, its
packaged ``src/<pkg>/contract.yaml``) and reports which variants and template versions are in
use, how nodes change their variant's mixins and kits, and where a person chose another variant
than the selector recommends today: the feedback that shows where the vocabulary or the policy
falls short. A file that cannot be read as an ONEX node is reported with its reason and never
stops the scan.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from selector.models import NodeType
from selector.policy import select
from selector.registry import PACKAGE_DIR, Registry, default_registry

ANSWERS_FILE = ".copier-answers.yml"
CONTRACT_FILE = "contract.yaml"
SKIPPED_FOLDERS = frozenset({".git", ".venv", "node_modules"})
# The repository the selector runs from, when it runs from a checkout of the template.
TEMPLATE_ROOT = PACKAGE_DIR.parent
# `git describe --tags` output, which Copier stores as `_commit` for a commit after a tag.
_DESCRIBED = re.compile(r"^(?P<tag>.+)-(?P<commits>\d+)-g[0-9a-f]+$")
_GIT_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class TemplateReleases:
    """The release tags of the template repository, oldest first; ``None`` when unknown (no git,
    not a repository, or no tags)."""

    path: str | None
    releases: tuple[str, ...] | None

    @property
    def newest(self) -> str | None:
        return self.releases[-1] if self.releases else None


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """Where one node's template version stands among the releases."""

    version: str | None  # the answers' `_commit`
    release: bool  # a tagged release (not a commit-named version)
    behind: int | None  # releases newer than the node's; None when that cannot be told


@dataclass(slots=True)
class FleetNode:
    path: str  # the node's folder
    source: str  # "answers" or "contract": the file the node was read from
    node_name: str | None
    node_type: str
    variant: str
    recommended: str | None
    features: list[str]
    operations: list[str]
    version: TemplateVersion
    mixins_added: list[str]
    mixins_removed: list[str]
    kits_added: list[str]
    kits_removed: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def overridden(self) -> bool:
        return self.recommended is not None and self.recommended != self.variant


@dataclass(frozen=True, slots=True)
class UnreadableFile:
    path: str
    reason: str


@dataclass(slots=True)
class FleetReport:
    template: TemplateReleases
    nodes: list[FleetNode]
    problems: list[UnreadableFile]

    def by_variant(self) -> dict[str, dict[str, int]]:
        """variant -> node type -> number of nodes."""
        counts: dict[str, Counter[str]] = {}
        for node in self.nodes:
            counts.setdefault(node.variant, Counter())[node.node_type] += 1
        return {variant: dict(sorted(c.items())) for variant, c in sorted(counts.items())}

    def template_versions(self) -> dict[str, int]:
        counts = Counter(node.version.version or "unversioned" for node in self.nodes)
        return dict(sorted(counts.items()))

    def changes(self) -> dict[str, dict[str, dict[str, int]]]:
        """variant -> change (mixins_added, ...) -> mixin or kit -> number of nodes."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for variant in sorted({node.variant for node in self.nodes}):
            nodes = [node for node in self.nodes if node.variant == variant]
            result[variant] = {
                change: dict(
                    sorted(Counter(n for node in nodes for n in getattr(node, change)).items())
                )
                for change in ("mixins_added", "mixins_removed", "kits_added", "kits_removed")
            }
        return result

    def overrides(self) -> list[FleetNode]:
        return [node for node in self.nodes if node.overridden]

    def as_json(self) -> dict[str, Any]:
        """The report with the stable keys ``python -m selector fleet --json`` prints."""
        return {
            "template": {
                "path": self.template.path,
                "releases": list(self.template.releases)
                if self.template.releases is not None
                else None,
                "newest_release": self.template.newest,
            },
            "nodes": [_node_json(node) for node in self.nodes],
            "by_variant": self.by_variant(),
            "template_versions": self.template_versions(),
            "changes": self.changes(),
            "overrides": [
                {
                    "path": node.path,
                    "node_name": node.node_name,
                    "node_type": node.node_type,
                    "variant": node.variant,
                    "recommended": node.recommended,
                    "features": node.features,
                }
                for node in self.overrides()
            ],
            "problems": [asdict(problem) for problem in self.problems],
        }


def _node_json(node: FleetNode) -> dict[str, Any]:
    record = asdict(node)
    version = record.pop("version")
    record["template_version"] = version["version"]
    record["release"] = version["release"]
    record["behind"] = version["behind"]
    record["override"] = node.overridden
    return record


class NotANodeError(ValueError):
    """The file cannot be read as an ONEX node; the message says why."""


def template_releases(template: Path | None = None) -> TemplateReleases:
    """The release tags of ``template`` (default: the repository the selector runs from), in
    PEP 440 order. Tags that are not PEP 440 versions, and pre-, dev- or local versions, are no
    releases."""
    if template is None and not (TEMPLATE_ROOT / "copier.yml").is_file():
        # An installed selector: the git repository around it, if any, is not the template's.
        return TemplateReleases(None, None)
    root = (template or TEMPLATE_ROOT).resolve()
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "tag", "--list"],
            capture_output=True,
            text=True,
            check=False,
            timeout=_GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return TemplateReleases(str(root), None)
    if listed.returncode != 0:
        return TemplateReleases(str(root), None)
    versions = [(v, tag) for tag in listed.stdout.split() if (v := _release(tag)) is not None]
    if not versions:
        return TemplateReleases(str(root), None)
    return TemplateReleases(str(root), tuple(tag for _, tag in sorted(versions)))


def _release(name: str) -> Version | None:
    try:
        version = Version(name)
    except InvalidVersion:
        return None
    if version.is_prerelease or version.is_devrelease or version.local is not None:
        return None
    return version


def place_version(commit: object, template: TemplateReleases) -> TemplateVersion:
    """Where a node's ``_commit`` stands: a release is behind by the number of newer releases;
    a commit after a tag (``1.0.0-3-gabc1234``) by the releases newer than that tag; a version
    named by a commit alone cannot be placed."""
    if commit is None or commit == "":
        return TemplateVersion(None, release=False, behind=None)
    name = str(commit)
    described = _DESCRIBED.match(name)
    base = _release(described["tag"] if described else name)
    if base is None or template.releases is None:
        return TemplateVersion(name, release=base is not None and not described, behind=None)
    newer = sum(1 for tag in template.releases if Version(tag) > base)
    return TemplateVersion(name, release=not described, behind=newer)


def _string_list(answers: dict[str, Any], key: str) -> list[str]:
    value = answers.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise NotANodeError(f"{key} is not a list of strings")
    return list(value)


def _recommend(
    node_type: str, operations: list[str], features: list[str], notes: list[str]
) -> str | None:
    try:
        return select(node_type, operations, features).variant
    except ValueError as exc:
        notes.append(f"the selector refuses the stored answers: {exc}")
        return None


def _node_type(value: object) -> str:
    if not isinstance(value, str):
        raise NotANodeError("node_type is missing or not a string")
    for kind in NodeType:
        if value in (kind.value, kind.onex_name):
            return kind.value
    raise NotANodeError(f"unknown node_type {value!r}; known: {', '.join(NodeType)}")


def _variant(value: object, registry: Registry) -> str:
    if not isinstance(value, str):
        raise NotANodeError("variant is missing or not a string")
    if value not in registry.variants:
        raise NotANodeError(f"unknown variant {value!r}; known: {', '.join(registry.variants)}")
    return value


def _load_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NotANodeError(f"cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise NotANodeError(f"not YAML{line}") from exc
    if not isinstance(data, dict):
        raise NotANodeError(f"not a YAML mapping (a {type(data).__name__})")
    return data


def _contract_paths(node_dir: Path) -> list[Path]:
    source = node_dir / "src"
    if not source.is_dir():
        return []
    return sorted(p for p in source.glob(f"*/{CONTRACT_FILE}") if p.is_file())


def read_answers(path: Path, template: TemplateReleases, registry: Registry) -> FleetNode:
    """One node from its answers file; raises ``NotANodeError`` saying why it is no ONEX node."""
    answers = _load_mapping(path)
    if "node_type" not in answers and "variant" not in answers:
        source = answers.get("_src_path")
        origin = f" (a Copier project of {source})" if isinstance(source, str) else ""
        raise NotANodeError(f"not an ONEX node: no node_type or variant answer{origin}")
    node_type = _node_type(answers.get("node_type"))
    variant = _variant(answers.get("variant"), registry)
    spec = registry.variants[variant]
    operations = _string_list(answers, "operations")
    features = _string_list(answers, "features")
    if "mixins_added" in answers or "mixins_removed" in answers or "mixins" not in answers:
        mixins_added = _string_list(answers, "mixins_added")
        mixins_removed = _string_list(answers, "mixins_removed")
    else:
        # Answers written before mixins were stored as changes list the node's whole set.
        chosen = _string_list(answers, "mixins")
        mixins_added = [m for m in chosen if m not in spec.mixins]
        mixins_removed = [m for m in spec.mixins if m not in chosen]
    notes: list[str] = []
    node = FleetNode(
        path=str(path.parent),
        source="answers",
        node_name=answers.get("node_name") if isinstance(answers.get("node_name"), str) else None,
        node_type=node_type,
        variant=variant,
        recommended=_recommend(node_type, operations, features, notes),
        features=features,
        operations=operations,
        version=place_version(answers.get("_commit"), template),
        mixins_added=mixins_added,
        mixins_removed=mixins_removed,
        kits_added=_string_list(answers, "kits_added"),
        kits_removed=_string_list(answers, "kits_removed"),
        notes=notes,
    )
    for contract in _contract_paths(path.parent):
        try:
            said = _contract_variant(_load_mapping(contract))
        except NotANodeError as exc:
            notes.append(f"{contract.name} of {contract.parent.name}: {exc}")
            continue
        if said is not None and said != variant:
            notes.append(f"{contract} names variant {said!r}, the answers {variant!r}")
    return node


def _contract_variant(contract: dict[str, Any]) -> str | None:
    annotations = contract.get("annotations")
    variant = annotations.get("variant") if isinstance(annotations, dict) else None
    name = variant.get("name") if isinstance(variant, dict) else None
    return name if isinstance(name, str) else None


def read_contract(path: Path, template: TemplateReleases, registry: Registry) -> FleetNode:
    """A node known only by its packaged contract (its answers file is gone): the variant, tags
    and template version its annotations record; its kit changes are not recorded there."""
    contract = _load_mapping(path)
    annotations = contract.get("annotations")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("variant"), dict):
        raise NotANodeError("not a contract of this template: no annotations.variant")
    recorded: dict[str, Any] = annotations["variant"]
    node_type = _node_type(contract.get("node_type"))
    variant = _variant(recorded.get("name"), registry)
    spec = registry.variants[variant]
    features = _string_list(annotations, "features")
    operations = [
        op["name"]
        for op in annotations.get("operations") or []
        if isinstance(op, dict) and isinstance(op.get("name"), str)
    ]
    mixins = _string_list(annotations, "mixins")
    version = recorded.get("template_version")
    notes = ["read from the contract: no answers file, kit changes unknown"]
    return FleetNode(
        path=str(path.parents[2]),
        source="contract",
        node_name=contract.get("name") if isinstance(contract.get("name"), str) else None,
        node_type=node_type,
        variant=variant,
        recommended=_recommend(node_type, operations, features, notes),
        features=features,
        operations=operations,
        version=place_version(None if version == "unversioned" else version, template),
        mixins_added=[m for m in mixins if m not in spec.mixins],
        mixins_removed=[m for m in spec.mixins if m not in mixins],
        kits_added=[],
        kits_removed=[],
        notes=notes,
    )


def _walk(folder: Path) -> Iterator[tuple[Path, list[str]]]:
    # os.walk does not follow symbolic links, so a link cycle cannot keep the scan going.
    for current, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS)
        yield Path(current), files


def scan(
    folders: Sequence[Path],
    template: Path | None = None,
    registry: Registry | None = None,
) -> FleetReport:
    """Every node under ``folders`` (recursively, skipping .git, .venv and node_modules)."""
    registry = registry or default_registry()
    releases = template_releases(template)
    nodes: list[FleetNode] = []
    problems: list[UnreadableFile] = []
    answered: set[Path] = set()
    contracts: list[Path] = []
    for folder in folders:
        for current, files in _walk(folder):
            if ANSWERS_FILE in files:
                answered.add(current.resolve())
                path = current / ANSWERS_FILE
                try:
                    nodes.append(read_answers(path, releases, registry))
                except NotANodeError as exc:
                    problems.append(UnreadableFile(str(path), str(exc)))
            if CONTRACT_FILE in files and current.parent.name == "src":
                contracts.append(current / CONTRACT_FILE)
    for path in _unanswered(contracts, answered):
        try:
            nodes.append(read_contract(path, releases, registry))
        except NotANodeError as exc:
            problems.append(UnreadableFile(str(path), str(exc)))
    return FleetReport(releases, nodes, problems)


def _unanswered(contracts: Iterable[Path], answered: set[Path]) -> list[Path]:
    """Contracts of packages whose node folder has no answers file, each once."""
    seen: set[Path] = set()
    found = []
    for path in contracts:
        resolved = path.resolve()
        if resolved in seen or resolved.parents[2] in answered:
            continue
        seen.add(resolved)
        found.append(path)
    return found
