"""The selector's data shapes: node types, variants, registry entries and selection results."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    field_serializer,
    model_validator,
)


class NodeType(StrEnum):
    """The four ONEX node types."""

    EFFECT = "effect"
    COMPUTE = "compute"
    REDUCER = "reducer"
    ORCHESTRATOR = "orchestrator"

    @property
    def onex_name(self) -> str:
        """The name ONEX contracts use for this node type, e.g. ``EFFECT_GENERIC``."""
        return f"{self.name}_GENERIC"


class Variant(StrEnum):
    """The built-in variants. Custom variants are plain strings validated against the registry."""

    MINIMAL = "minimal"
    STANDARD = "standard"
    PRODUCTION = "production"
    DATABASE_HEAVY = "database_heavy"
    API_HEAVY = "api_heavy"
    KAFKA_HEAVY = "kafka_heavy"
    ML_INFERENCE = "ml_inference"
    ANALYTICS = "analytics"
    WORKFLOW = "workflow"


class Tier(StrEnum):
    """General-purpose variants, chosen by size and hardening when no domain is signalled."""

    MINIMAL = "minimal"
    STANDARD = "standard"
    PRODUCTION = "production"


class TagCategory(StrEnum):
    """What a non-domain feature tag signals."""

    PRODUCTION = "production"
    BASIC = "basic"
    SHARED = "shared"


_Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)]


class OperationRange(BaseModel):
    """How many operations the variant is designed for (informational, never enforced)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> OperationRange:
        if self.min > self.max:
            raise ValueError(f"operations.min ({self.min}) exceeds operations.max ({self.max})")
        return self


class Domain(BaseModel):
    """The domain a specialised variant serves, and where it stands in tie-breaks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: _Identifier
    # Lower wins a tie between domains of equal strength that are nobody's home domain.
    priority: int
    # Node types for which this domain wins every tie.
    home_for: tuple[NodeType, ...] = ()


# Kit vocabulary lives in the lexicon beside the domains and tiers under this prefix, so a kit
# named like a domain (kafka, workflow) can still declare tags without sharing its category.
KIT_CATEGORY_PREFIX = "kit:"


def kit_category(kit: str) -> str:
    """The lexicon category of the tags that ask for ``kit`` directly, e.g. ``kit:outbox``."""
    return KIT_CATEGORY_PREFIX + kit


class IntegrationSpec(BaseModel):
    """One kit of the catalogue: a module integrations/<name>.py and what a node needs to use it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary: str
    # Node types a node may choose this kit for. A kit another kit requires travels with it to
    # that kit's node types (workflow orchestrators carry postgres) without being listed here.
    node_types: tuple[NodeType, ...] = Field(min_length=1)
    # Tags that ask for this kit itself rather than for a domain (entry -> other spellings);
    # they join the vocabulary, where a spelling belongs to one place only.
    signals: dict[_Identifier, tuple[_Identifier, ...]] = Field(default_factory=dict)
    # PEP 508 requirements added to the rendered node's dependencies and `dev` extra.
    dependencies: tuple[str, ...] = ()
    dev_dependencies: tuple[str, ...] = ()
    # Mixins the kit imports; the node's mixins must keep them.
    requires_mixins: tuple[_Identifier, ...] = ()
    # Other kits the kit imports; every variant listing it lists them too.
    requires_integrations: tuple[_Identifier, ...] = ()
    # Environment variables that point the node at a real deployment.
    environment: tuple[str, ...] = ()
    # How the ONEX contract lists what `environment` points at: a running service, or an
    # external resource such as a model file.
    dependency_type: Literal["service", "external"] = "service"
    # Modules the kit imports that ship no type information (mypy overrides in the node).
    untyped_modules: tuple[str, ...] = ()
    # What the kit brings to a node (selector/plan.py reads these; its code fragments are in
    # partials/kits/<name>/). Keys of `provides` are node types or "all".
    # A service of its own: a container in docker-compose and a fixture in the node's tests.
    service: bool = False
    # Capabilities shared templates test for, e.g. `state_in_database` for reducers.
    provides: dict[str, tuple[_Identifier, ...]] = Field(default_factory=dict)
    # Node types with an example handler (partials/kits/<name>/handlers_<type>.py.jinja and
    # handler_tests_<type>.py.jinja), each with the example test files that come with it.
    examples: dict[NodeType, tuple[str, ...]] = Field(default_factory=dict)
    # Node types where the kit follows up another kit's example: at the end of each example
    # operation it does its part with the output (partials/kits/<name>/follow_up.py.jinja),
    # each with the test files that check it.
    follows_up: dict[NodeType, tuple[str, ...]] = Field(default_factory=dict)
    # What `onex validate --strict` still reports on the kit's modules and the node accepts
    # (module path, start of the message): ONEX's advice on class and parameter counts.
    onex_advice: tuple[tuple[str, str], ...] = ()


class VariantSpec(BaseModel):
    """One registry entry: everything the selector and the template know about a variant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: _Identifier
    title: str
    summary: str
    supported_node_types: tuple[NodeType, ...] = Field(min_length=1)
    operations: OperationRange
    features: tuple[str, ...]
    mixins: tuple[_Identifier, ...]
    patterns: tuple[str, ...]
    complexity: int = Field(ge=1, le=5)
    performance: dict[str, str]
    # The longest one operation may take, in milliseconds: the contract's performance budget
    # (`performance.single_operation_max_ms`) and the ONEX descriptor's `timeout_ms`.
    operation_budget_ms: int = Field(default=10_000, gt=0, le=3_600_000)
    prerequisites: tuple[str, ...]
    # Kits from integrations/ (catalogue: integrations.yaml) the node's operations are built on.
    integrations: tuple[_Identifier, ...] = ()
    # Exactly one of these two: a tier variant or a domain variant.
    tier: Tier | None = None
    domain: Domain | None = None
    # Domain vocabulary: entry -> other spellings of the same meaning.
    signals: dict[_Identifier, tuple[_Identifier, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tier_or_domain(self) -> VariantSpec:
        if (self.tier is None) == (self.domain is None):
            raise ValueError(f"variant {self.name!r} must set exactly one of 'tier' or 'domain'")
        if self.domain is not None and not self.signals:
            raise ValueError(f"domain variant {self.name!r} needs at least one entry in 'signals'")
        if self.tier is not None and self.signals:
            raise ValueError(f"tier variant {self.name!r} must not declare 'signals'")
        if self.tier is not None and self.tier.value != self.name:
            raise ValueError(f"tier variant {self.name!r} must be named after its tier")
        return self

    def supports(self, node_type: NodeType) -> bool:
        return node_type in self.supported_node_types


class RankedVariant(NamedTuple):
    """A compatible variant with its score (``selector.policy.explain`` adds the reasons).

    A named tuple rather than a model: the selector builds up to nine per call, and a model's
    construction cost would triple its latency. ``SelectionResult`` serialises them as objects.
    """

    variant: str
    score: float


class SelectionResult(BaseModel):
    """What ``select`` returns."""

    model_config = ConfigDict(frozen=True)

    node_type: NodeType
    variant: str
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str
    matched_features: dict[str, str]
    # Built only by ``select`` from registry data, never parsed from input: validating nine
    # tuples again would cost a tenth of the selector's time.
    alternatives: Annotated[tuple[RankedVariant, ...], SkipValidation]
    warnings: tuple[str, ...]
    selector_version: str
    # Kits recommended beside the variant's own, in the order the node lists them
    # (``selector.kits.effective_kits``); the rationale says why each was added.
    # Built by ``select`` from registry data, never parsed from input (as ``alternatives``).
    kits_added: Annotated[list[str], SkipValidation] = Field(default_factory=list)

    @field_serializer("alternatives")
    def _alternatives_as_objects(
        self, alternatives: tuple[RankedVariant, ...]
    ) -> list[dict[str, str | float]]:
        return [alt._asdict() for alt in alternatives]
