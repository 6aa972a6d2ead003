"""Answers migration for nodes made before 0.2.0: the stored `mixins` list becomes
`mixins_added` / `mixins_removed`, the changes to the variant's own mixins.

Run by `copier update` before it renders (see `_migrations` in copier.yml), in the node's
directory, with the new template checkout as the first argument. The node keeps exactly the
mixins it had: the changes are taken against the variant as the new template defines it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ANSWERS_FILE = Path(".copier-answers.yml")


def migrate(answers: dict[str, object], variant_mixins: list[str]) -> dict[str, object]:
    """The answers with `mixins` replaced by the two delta answers (unchanged if already done)."""
    if "mixins" not in answers:
        return answers
    raw = answers.pop("mixins")
    stored = [str(m) for m in raw] if isinstance(raw, list) else []
    answers["mixins_added"] = [m for m in stored if m not in variant_mixins]
    answers["mixins_removed"] = [m for m in variant_mixins if m not in stored]
    return answers


def main(template_root: str) -> int:
    sys.path.insert(0, template_root)
    from selector import default_registry

    text = ANSWERS_FILE.read_text(encoding="utf-8")
    answers = yaml.safe_load(text) or {}
    registry = default_registry()
    variant = str(answers.get("variant", ""))
    own = list(registry.get(variant).mixins) if variant in registry.variants else []
    if "mixins" not in answers:
        return 0
    migrated = migrate(answers, own)
    header = text.splitlines()[0] if text.startswith("#") else ""
    body = yaml.safe_dump(migrated, sort_keys=True, allow_unicode=True)
    ANSWERS_FILE.write_text(f"{header}\n{body}" if header else body, encoding="utf-8")
    print(
        f"migrated {ANSWERS_FILE}: mixins -> mixins_added {migrated['mixins_added']}, "
        f"mixins_removed {migrated['mixins_removed']} (relative to the {variant} variant)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
