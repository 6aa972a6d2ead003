"""The variant registry: YAML data under ``variants/``, validated by the models at load time.

Adding a variant means dropping a ``variants/<name>.yaml`` file (and its template partials);
no scoring code changes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from selector.models import (
    IntegrationSpec,
    NodeType,
    RankedVariant,
    TagCategory,
    Tier,
    VariantSpec,
    kit_category,
)
from selector.vocabulary import Lexicon

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_VARIANTS_DIR = PACKAGE_DIR / "variants"
DEFAULT_VOCABULARY_FILE = PACKAGE_DIR / "vocabulary.yaml"
DEFAULT_MIXINS_FILE = PACKAGE_DIR / "mixins.yaml"
DEFAULT_INTEGRATIONS_FILE = PACKAGE_DIR / "integrations.yaml"


@dataclass(frozen=True, slots=True)
class DomainSlot:
    """A domain variant as the policy sees it for one node type."""

    variant: str
    domain: str
    home: bool
    supported: bool
    fits: str  # the node types it supports, for messages
    unsignalled: RankedVariant  # its entry in the ranking when no tag signals it


@dataclass(frozen=True, slots=True)
class NodeTypePlan:
    """What the policy needs about the registry for one node type, worked out at load."""

    domains: tuple[DomainSlot, ...]  # tie-break order: home domain first, then by priority
    tiers: tuple[str, ...]  # compatible tier variants, smallest first


class RegistryError(ValueError):
    """The registry data is inconsistent; the message names the file and the field."""


class Registry:
    """All known variants plus the lexicon of feature tags built from them."""

    def __init__(
        self,
        variants: Iterable[VariantSpec],
        shared_vocabulary: Mapping[str, Any],
        mixins: Mapping[str, str],
        integrations: Mapping[str, IntegrationSpec] | None = None,
    ) -> None:
        self.mixins: dict[str, str] = dict(mixins)
        self.integrations: dict[str, IntegrationSpec] = dict(integrations or {})
        for kit_name, kit in self.integrations.items():
            missing = [m for m in kit.requires_mixins if m not in self.mixins]
            if missing:
                raise RegistryError(
                    f"integrations.yaml: {kit_name!r} requires unknown mixins {missing}; "
                    f"known: {', '.join(self.mixins)}"
                )
            # Catalogue order is the order of a node's kits: what a kit needs is opened first.
            earlier = list(self.integrations)[: list(self.integrations).index(kit_name)]
            misplaced = [k for k in kit.requires_integrations if k not in earlier]
            if misplaced:
                raise RegistryError(
                    f"integrations.yaml: {kit_name!r} requires {misplaced}, which must be "
                    f"catalogue entries listed before it; known: {', '.join(self.integrations)}"
                )
        self.variants: dict[str, VariantSpec] = {}
        for spec in variants:
            if spec.name in self.variants:
                raise RegistryError(f"variant {spec.name!r} is defined twice")
            unknown_mixins = [m for m in spec.mixins if m not in self.mixins]
            if unknown_mixins:
                raise RegistryError(
                    f"variant {spec.name!r} suggests unknown mixins {unknown_mixins}; "
                    f"known: {', '.join(self.mixins)}"
                )
            unknown_kits = [k for k in spec.integrations if k not in self.integrations]
            if unknown_kits:
                raise RegistryError(
                    f"variant {spec.name!r} uses unknown integrations {unknown_kits}; "
                    f"known: {', '.join(self.integrations) or 'none'}"
                )
            missing_kits = [
                needed
                for kit in spec.integrations
                for needed in self.integrations[kit].requires_integrations
                if needed not in spec.integrations
            ]
            if missing_kits:
                raise RegistryError(
                    f"variant {spec.name!r} must also list the integrations {missing_kits}, "
                    "which its kits import"
                )
            # A kit another listed kit requires comes with it whatever the node type.
            required = {
                n for k in spec.integrations for n in self.integrations[k].requires_integrations
            }
            unfit = [
                f"{kit} ({kind.value})"
                for kit in spec.integrations
                if kit not in required
                for kind in spec.supported_node_types
                if kind not in self.integrations[kit].node_types
            ]
            if unfit:
                raise RegistryError(
                    f"variant {spec.name!r} supports node types its integrations do not: "
                    f"{', '.join(unfit)} (integrations.yaml: node_types)"
                )
            self.variants[spec.name] = spec
        missing_tiers = {t.value for t in Tier} - set(self.variants)
        if missing_tiers:
            raise RegistryError(f"tier variants missing from the registry: {sorted(missing_tiers)}")

        self.domains = sorted(
            (s for s in self.variants.values() if s.domain is not None),
            key=lambda s: (s.domain.priority if s.domain else 0, s.name),
        )
        seen: dict[str, str] = {}
        for spec in self.domains:
            assert spec.domain is not None
            if spec.domain.name in {c.value for c in TagCategory}:
                raise RegistryError(f"{spec.name}: domain name {spec.domain.name!r} is reserved")
            if spec.domain.name in seen:
                raise RegistryError(
                    f"{spec.name} and {seen[spec.domain.name]} both claim "
                    f"domain {spec.domain.name!r}"
                )
            seen[spec.domain.name] = spec.name
        # Presentation order: tiers from small to large, then domains in tie-break order.
        tiers = [self.variants[t.value] for t in Tier]
        self.variants = {spec.name: spec for spec in (*tiers, *self.domains)}

        categories: dict[str, tuple[str, Mapping[str, tuple[str, ...]]]] = {}
        for category in TagCategory:
            words = shared_vocabulary.get(category.value) or {}
            categories[category.value] = (
                "vocabulary.yaml",
                {entry: tuple(aliases or ()) for entry, aliases in words.items()},
            )
        unknown = set(shared_vocabulary) - {c.value for c in TagCategory}
        if unknown:
            raise RegistryError(f"vocabulary.yaml: unknown categories {sorted(unknown)}")
        for spec in self.domains:
            assert spec.domain is not None
            categories[spec.domain.name] = (f"variants/{spec.name}.yaml", spec.signals)
        for kit_name, kit in self.integrations.items():
            if kit.signals:
                categories[kit_category(kit_name)] = ("integrations.yaml", kit.signals)
        try:
            self.lexicon = Lexicon(categories)
        except ValueError as exc:
            raise RegistryError(str(exc)) from exc
        self.plans = {kind: self._plan(kind) for kind in NodeType}

    def _plan(self, kind: NodeType) -> NodeTypePlan:
        slots = []
        for spec in self.domains:
            assert spec.domain is not None
            slots.append(
                DomainSlot(
                    variant=spec.name,
                    domain=spec.domain.name,
                    home=kind in spec.domain.home_for,
                    supported=spec.supports(kind),
                    fits=" or ".join(t.value for t in spec.supported_node_types),
                    unsignalled=RankedVariant(spec.name, 0.0),
                )
            )
        slots.sort(key=lambda slot: not slot.home)  # stable: priority order otherwise kept
        tiers = tuple(t.value for t in Tier if self.variants[t.value].supports(kind))
        return NodeTypePlan(tuple(slots), tiers)

    def get(self, name: str) -> VariantSpec:
        try:
            return self.variants[name]
        except KeyError:
            raise KeyError(
                f"unknown variant {name!r}; known variants: {', '.join(self.variants)}"
            ) from None

    def required_mixins(self, variant: str) -> tuple[str, ...]:
        """Mixins the variant's integration kits import, in catalogue order."""
        kits = self.get(variant).integrations
        needed = {m for kit in kits for m in self.integrations[kit].requires_mixins}
        return tuple(m for m in self.mixins if m in needed)

    def compatible(self, node_type: NodeType) -> list[VariantSpec]:
        return [spec for spec in self.variants.values() if spec.supports(node_type)]

    def matrix(self) -> dict[str, tuple[NodeType, ...]]:
        return {name: spec.supported_node_types for name, spec in self.variants.items()}

    def vocabulary(self) -> dict[str, list[str]]:
        """Category -> vocabulary entries, for help texts and documentation."""
        grouped: dict[str, list[str]] = {}
        for meaning in self.lexicon.spellings().values():
            entries = grouped.setdefault(meaning.category, [])
            if meaning.entry not in entries:
                entries.append(meaning.entry)
        return grouped


# libyaml's loader when PyYAML was built with it: the registry is read on every `copier copy`,
# and the pure-Python loader takes most of that time.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc


def load_registry(
    variants_dir: Path = DEFAULT_VARIANTS_DIR,
    vocabulary_file: Path = DEFAULT_VOCABULARY_FILE,
    mixins_file: Path = DEFAULT_MIXINS_FILE,
    integrations_file: Path = DEFAULT_INTEGRATIONS_FILE,
) -> Registry:
    """Read and validate every ``*.yaml`` file in ``variants_dir``."""
    specs = []
    for path in sorted(variants_dir.glob("*.yaml")):
        try:
            spec = VariantSpec.model_validate(_read_yaml(path))
        except ValidationError as exc:
            raise RegistryError(f"{path}: {exc}") from exc
        if spec.name != path.stem:
            raise RegistryError(f"{path}: 'name' is {spec.name!r}, expected {path.stem!r}")
        specs.append(spec)
    mixins = _read_yaml(mixins_file) or {}
    if not isinstance(mixins, dict) or not all(isinstance(v, str) for v in mixins.values()):
        raise RegistryError(f"{mixins_file}: expected a mapping of mixin name to description")
    raw_kits = _read_yaml(integrations_file) if integrations_file.exists() else {}
    if not isinstance(raw_kits, dict):
        raise RegistryError(f"{integrations_file}: expected a mapping of integration name to entry")
    kits = {}
    for kit_name, entry in raw_kits.items():
        try:
            kits[kit_name] = IntegrationSpec.model_validate(entry)
        except ValidationError as exc:
            raise RegistryError(f"{integrations_file}: {kit_name}: {exc}") from exc
    return Registry(specs, _read_yaml(vocabulary_file) or {}, mixins, kits)


@functools.cache
def default_registry() -> Registry:
    """The registry shipped with this template, loaded once per process."""
    return load_registry()
