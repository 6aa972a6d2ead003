"""The Jinja adapter: what it adds to Copier's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2 import DictLoader, Environment

from extensions.formatting import ruff_format
from extensions.selector_extension import SelectorExtension, _CompiledTemplates


def test_compiled_templates_are_found_again_from_another_clone() -> None:
    cache = _CompiledTemplates()
    # Copier renders from a fresh temporary clone each time: the path must not be in the key.
    first = cache.get_cache_key("template/README.md.jinja", "/tmp/copier._vcs.clone.abc/x")
    again = cache.get_cache_key("template/README.md.jinja", "/tmp/copier._vcs.clone.def/x")
    other = cache.get_cache_key("template/contract.yaml.jinja", "/tmp/copier._vcs.clone.def/x")
    assert first == again
    assert first != other


def test_a_changed_source_is_compiled_afresh(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()

    def render(source: str) -> str:
        env = Environment(
            loader=DictLoader({"page.jinja": source}),
            bytecode_cache=_CompiledTemplates(str(cache_dir)),
        )
        return env.get_template("page.jinja").render(name="x")

    assert render("one {{ name }}") == "one x"
    assert render("one {{ name }}") == "one x"  # from the cache
    assert render("two {{ name }}") == "two x"  # same key, new checksum
    assert len(list(cache_dir.iterdir())) == 1  # one entry per file name, not per version


def test_the_extension_keeps_compiled_templates_unless_a_cache_is_configured(
    tmp_path: Path,
) -> None:
    env = Environment(extensions=[SelectorExtension])
    assert isinstance(env.bytecode_cache, _CompiledTemplates)
    assert (
        env.globals["onex"].recommend("effect", ["add"], ["postgres"]).variant == "database_heavy"
    )
    mine = _CompiledTemplates(str(tmp_path))
    configured = Environment(bytecode_cache=mine, extensions=[SelectorExtension])
    assert configured.bytecode_cache is mine


def test_templates_reach_the_selector_through_one_namespace() -> None:
    env = Environment(extensions=[SelectorExtension])
    assert not [name for name in env.globals if name.startswith("onex_")]
    rendered = env.from_string(
        "{{ onex.effective_kits('workflow', [], []) | join(',') }}|{{ 'x' | python_str }}"
    ).render()
    assert rendered == 'postgres,workflow|"x"'


def test_rendered_python_is_laid_out_by_ruff_and_broken_python_fails_the_render() -> None:
    assert ruff_format("def f(\n    a,\n) -> None:\n    g(\n        a,\n    )\n") == (
        "def f(a) -> None:\n    g(a)\n"
    )
    with pytest.raises(ValueError, match=r"does not parse(.|\n)*   2  return handlers\.\("):
        ruff_format("def f():\n return handlers.(state)\n")


def test_each_distinct_string_is_compiled_once_and_renders_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []
    original = Environment._parse

    def counting_parse(self: Environment, source: str, name: str | None, filename: str | None):  # type: ignore[no-untyped-def]
        compiled.append(source)
        return original(self, source, name, filename)

    monkeypatch.setattr(Environment, "_parse", counting_parse)
    env = Environment(extensions=[SelectorExtension])
    for name in ["a", "b", "a"]:
        assert env.from_string("{{ name }}-{% if name == 'a' %}x{% endif %}").render(name=name) == (
            f"{name}-{'x' if name == 'a' else ''}"
        )
    assert env.from_string("{{ 1 + 1 }}").render() == "2"
    assert compiled == ["{{ name }}-{% if name == 'a' %}x{% endif %}", "{{ 1 + 1 }}"]


def test_the_template_s_python_is_formatted_and_copies_of_modules_are_not() -> None:
    loose = "x = f(\n    a,\n)\n"
    env = Environment(
        loader=DictLoader(
            {
                "template/src/pkg/node.py.jinja": loose,
                # A copy is known by its source, wherever it sits and whatever its name.
                "template/src/pkg/{% if kits %}kits{% endif %}/copy.py.jinja": (
                    "{% include 'mixins/sample.py' %}"
                ),
                "template/tests/{% if x %}local.py{% endif %}.jinja": (
                    "{%- include 'integrations/sample.py' %}"
                ),
                "mixins/sample.py": loose,
                "integrations/sample.py": loose,
                "partials/part.py.jinja": loose,
            }
        ),
        extensions=[SelectorExtension],
        keep_trailing_newline=True,  # as Copier renders
    )
    env.bytecode_cache = None  # compile here, not from the user's cache
    render = {name: env.get_template(name).render() for name in env.list_templates()}
    assert render["template/src/pkg/node.py.jinja"] == "x = f(a)\n"
    assert render["template/src/pkg/{% if kits %}kits{% endif %}/copy.py.jinja"] == loose
    assert render["template/tests/{% if x %}local.py{% endif %}.jinja"] == loose
    assert render["partials/part.py.jinja"] == loose
