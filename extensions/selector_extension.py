"""Jinja adapter that exposes the variant selector to Copier. No logic lives here."""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from jinja2 import Environment, FileSystemBytecodeCache
from jinja2.ext import Extension

_TEMPLATE_ROOT = str(Path(__file__).resolve().parent.parent)
# The files Copier renders into a node (`_subdirectory` in copier.yml), named from the root.
_SUBDIRECTORY = "template/"
# Packages of this checkout that templates reach (through the modules below).
_OWN_PACKAGES = ("selector", "extensions")
# A template that includes a module of these packages copies it into the node as it is.
_COPIES_A_MODULE = re.compile(r"\{%-?\s*include\s+'(?:mixins|integrations)/[^']+\.py'")


def _fresh(module: str) -> ModuleType:
    """Import ``module`` from this template checkout.

    ``copier update`` renders the old and the new template version in one process; without
    dropping the already-imported modules, the new version would run the old selector.
    """
    for name in [m for m in sys.modules if m.split(".")[0] in _OWN_PACKAGES]:
        del sys.modules[name]
    if _TEMPLATE_ROOT in sys.path:
        sys.path.remove(_TEMPLATE_ROOT)
    sys.path.insert(0, _TEMPLATE_ROOT)
    return importlib.import_module(module)


class _CompiledTemplates(FileSystemBytecodeCache):
    """Jinja's file cache of compiled templates, keyed by this template's file names.

    Jinja's own key adds the file's path, which is a fresh temporary clone on every
    ``copier copy``: nothing would ever be found again and the cache would only grow. By name,
    each file has one entry, overwritten when its source changes (every entry carries a
    checksum of its source, so a stale one is never used).
    """

    def get_cache_key(self, name: str, filename: str | None = None) -> str:
        del filename
        # "formatted-2/": compiled with what `preprocess` below wraps around the source (the
        # checksum covers the source only, so a change to that wrapping needs a new prefix).
        return super().get_cache_key(f"onex-node-template/formatted-2/{name}")


def _formats_as_python(name: str | None, source: str) -> bool:
    """A file of the node written as Python: one of the template's own files (partials are
    parts of such files), not a copy of one of this repository's modules, which nodes get
    byte for byte (said by its source, an include of the module, not by where it sits)."""
    if name is None or not name.startswith(_SUBDIRECTORY):
        return False
    return ".py" in name.rpartition("/")[2] and not _COPIES_A_MODULE.search(source)


def _compile_strings_once(environment: Environment) -> None:
    """Copier renders every path part and question attribute with ``from_string``, which
    compiles anew each time: a `copier copy` compiles about 850 strings, 176 of them distinct.
    Compiling each distinct string once per environment takes most of that cost away. Bounded;
    template files (named) keep Jinja's own cache and the bytecode cache."""
    compile_source: Callable[..., Any] = environment.compile

    @functools.lru_cache(maxsize=2048)
    def compile_string(source: str, raw: bool, defer_init: bool) -> Any:
        return compile_source(source, raw=raw, defer_init=defer_init)

    def compile_once(
        source: Any,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        if name is None and filename is None and isinstance(source, str):
            return compile_string(source, raw, defer_init)
        return compile_source(source, name, filename, raw, defer_init)

    environment.compile = compile_once  # type: ignore[method-assign]


class SelectorExtension(Extension):
    """Adds the ``onex`` namespace (questionnaire, validators, derived answers), the literal
    filters, and ruff's layout for every Python file the template renders."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        del filename
        if _formats_as_python(name, source):
            return "{% filter ruff_format %}" + source + "{% endfilter %}"
        return source

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        # Compiled templates are kept between runs, as Python keeps .pyc files: compiling this
        # template's files is a fifth of a `copier copy`. The directory is Jinja's default,
        # private to the user (Jinja checks it); where none can be made, templates are
        # compiled every time, as without this.
        if environment.bytecode_cache is None:
            with contextlib.suppress(OSError, RuntimeError):
                environment.bytecode_cache = _CompiledTemplates(
                    pattern="__onex_node_template_%s.cache"
                )
        _compile_strings_once(environment)
        try:
            questionnaire = _fresh("extensions.questionnaire")
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                f"this template's selector needs the Python package {exc.name!r} in the "
                "environment Copier runs in (the template's README, Quick start, installs it)"
            ) from exc
        literals = importlib.import_module("extensions.literals")
        formatting = importlib.import_module("extensions.formatting")
        validation = importlib.import_module("selector.validation")
        environment.filters.update(
            ruff_format=formatting.ruff_format,
            python_str=literals.python_str,
            display_width=literals.display_width,
            non_ascii=literals.non_ascii,
            toml_str=literals.toml_str,
            yaml_str=literals.yaml_str,
        )
        environment.globals["onex"] = SimpleNamespace(
            recommend=questionnaire.recommend,
            variant_choices=questionnaire.variant_choices,
            variant_help=questionnaire.variant_help,
            variant_spec=questionnaire.variant_spec,
            mixin_choices=questionnaire.mixin_choices,
            mixin_delta_help=questionnaire.mixin_delta_help,
            effective_mixins=questionnaire.effective_mixins,
            vocabulary_help=questionnaire.vocabulary_help,
            effective_kits=questionnaire.effective_kits,
            suggested_kits=questionnaire.suggested_kits,
            kit_choices=questionnaire.kit_choices,
            kit_delta_help=questionnaire.kit_delta_help,
            kit_delta_problem=validation.kit_delta_problem,
            kit_specs=questionnaire.kit_specs,
            node_plan=questionnaire.node_plan,
            node_type_name=questionnaire.onex_node_type,
            node_name_problem=validation.node_name_problem,
            operations_problem=validation.operations_problem,
            features_problem=validation.features_problem,
            mixin_delta_problem=validation.mixin_delta_problem,
            selector_version=importlib.import_module("selector.version").SELECTOR_VERSION,
        )
