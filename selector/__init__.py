"""Variant selector for ONEX node templates: reads a node's questionnaire answers and recommends
one of the registered variants. Plain Python; knows nothing of Copier."""

from selector.models import NodeType, RankedVariant, SelectionResult, Variant, VariantSpec
from selector.policy import explain, select
from selector.registry import Registry, RegistryError, default_registry, load_registry
from selector.version import SELECTOR_VERSION

__version__ = SELECTOR_VERSION

__all__ = [
    "SELECTOR_VERSION",
    "NodeType",
    "RankedVariant",
    "Registry",
    "RegistryError",
    "SelectionResult",
    "Variant",
    "VariantSpec",
    "default_registry",
    "explain",
    "load_registry",
    "select",
]
