"""Feature-tag normalisation: from what a person typed to the vocabulary entry it means."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# Tags are matched on a canonical spelling: lower case, words joined by single underscores.
_SEPARATORS = re.compile(r"[\s\-./]+")
_UNDERSCORES = re.compile(r"_+")
# A trailing version: postgres16, postgresql_15, kafka-3.7, tensorflow2, onnx v1.17.
_VERSION_SUFFIX = re.compile(r"^(?P<stem>.*?[a-z])_?v?\d+(?:_\d+)*$")


def canonical_spelling(raw: str) -> str:
    """Lower-case ``raw`` and make ``-``, space, ``.`` and ``/`` count as ``_``."""
    lowered = _SEPARATORS.sub("_", raw.strip().lower())
    return _UNDERSCORES.sub("_", lowered).strip("_")


def _singulars(word: str) -> Iterator[str]:
    """English singulars of the last word, most specific rule first."""
    if word.endswith("ies") and len(word) > 4:
        yield word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches", "shes")) and len(word) > 4:
        yield word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        yield word[:-1]


def _compact(spelling: str) -> str:
    """The spelling without underscores, so CamelCase and run-together words still match."""
    return spelling.replace("_", "")


@dataclass(frozen=True, slots=True)
class Meaning:
    """The vocabulary entry a tag stands for and the category (domain or tier signal) it is in."""

    entry: str
    category: str


class Lexicon:
    """Maps the spellings of every known tag to its meaning.

    Built once from the registry and the shared vocabulary; lookups are dictionary hits.
    """

    def __init__(
        self,
        entries: Mapping[str, tuple[str, Mapping[str, tuple[str, ...]]]],
    ) -> None:
        """``entries``: category -> (source, {entry: aliases}); source names the declaring file."""
        exact: dict[str, Meaning] = {}
        sources = {category: source for category, (source, _) in entries.items()}
        for category, (_source, words) in entries.items():
            for entry, aliases in words.items():
                for spelling in (entry, *aliases):
                    key = canonical_spelling(spelling)
                    meaning = Meaning(entry, category)
                    previous = exact.setdefault(key, meaning)
                    if previous != meaning:
                        raise ValueError(
                            f"feature tag {spelling!r} is claimed by both "
                            f"{previous.category}:{previous.entry} ({sources[previous.category]}) "
                            f"and {category}:{entry} ({sources[category]})"
                        )
        compact: dict[str, Meaning | None] = {}
        for key, meaning in exact.items():
            squeezed = _compact(key)
            if squeezed in compact and compact[squeezed] != meaning:
                compact[squeezed] = None  # ambiguous without separators: require them
            else:
                compact.setdefault(squeezed, meaning)
        self._exact = exact
        self._compact = {k: v for k, v in compact.items() if v is not None}

    def spellings(self) -> Mapping[str, Meaning]:
        return self._exact

    def lookup(self, raw: str) -> Meaning | None:
        """The meaning of a tag as typed, or ``None`` when it is not in the vocabulary."""
        meaning = self._exact.get(raw)  # most tags arrive already in canonical spelling
        return meaning if meaning is not None else self._resolve(canonical_spelling(raw))

    def _resolve(self, spelling: str) -> Meaning | None:
        for candidate in self._candidates(spelling):
            meaning = self._exact.get(candidate) or self._compact.get(_compact(candidate))
            if meaning is not None:
                return meaning
        return None

    @staticmethod
    def _candidates(spelling: str) -> Iterator[str]:
        yield spelling
        versionless = _VERSION_SUFFIX.match(spelling)
        stems = [spelling]
        if versionless is not None:
            stems.append(versionless.group("stem").rstrip("_"))
            yield stems[-1]
        for stem in stems:
            yield from _singulars(stem)
