"""Feature-tag normalisation: from what a person typed to the vocabulary entry it means."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein
from spellchecker import SpellChecker

from selector.models import TagCategory

# Tags are matched on a canonical spelling: lower case, words joined by single underscores.
_SEPARATORS = re.compile(r"[\s\-./]+")
_UNDERSCORES = re.compile(r"_+")
# A trailing version: postgres16, postgresql_15, kafka-3.7, tensorflow2, onnx v1.17.
_VERSION_SUFFIX = re.compile(r"^(?P<stem>.*?[a-z])_?v?\d+(?:_\d+)*$")
# Word boundaries inside camelCase and acronyms: kafkaTopic, PostgreSQLReplication, http2Gateway.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# A word that turns the rest of the tag around ("no_kafka", "without db"): it signals nothing.
_NEGATIONS = frozenset({"no", "non", "not", "without"})
# Tokens joined back together when looking for a multi-word entry (dead_letter_queue).
_LONGEST_PHRASE = 4
# Misspellings: only tags this long are corrected, within this Damerau-Levenshtein distance.
_MIN_CORRECTABLE = 5
_LONG_TAG = 8
# Unknown tags are read once per distinct spelling; the bound keeps odd inputs from growing it.
_READINGS_CACHED = 2048
# How strongly a category's words speak for a compound tag: a domain or kit named in it decides,
# then production-grade over basic over shared words, which only describe.
_CATEGORY_RANK = {
    TagCategory.SHARED.value: 0,
    TagCategory.BASIC.value: 1,
    TagCategory.PRODUCTION.value: 2,
}
_SIGNAL_RANK = 3


def canonical_spelling(raw: str) -> str:
    """Lower-case ``raw`` and make ``-``, space, ``.`` and ``/`` count as ``_``."""
    lowered = _SEPARATORS.sub("_", raw.strip().lower())
    return _UNDERSCORES.sub("_", lowered).strip("_")


def split_tokens(raw: str) -> list[str]:
    """The words of a tag: split on ``_ - . /``, spaces and camelCase, lower-cased."""
    spelling = canonical_spelling(_CAMEL_BOUNDARY.sub("_", raw))
    return spelling.split("_") if spelling else []


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """English words, which are never read as misspellings of vocabulary words
    (``status`` is not ``stats``). Loaded on the first tag that looks like a misspelling."""
    return frozenset(SpellChecker(distance=1).word_frequency.dictionary)


def _max_distance(spelling: str) -> int:
    """How many edits a misspelling of this length may be away from what it meant."""
    if len(spelling) < _MIN_CORRECTABLE:
        return 0
    return 1 if len(spelling) < _LONG_TAG else 2


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


@dataclass(frozen=True, slots=True)
class Reading:
    """How a tag that is not a vocabulary spelling as a whole was read.

    ``label`` names it in the rationale with the word that matched, e.g. ``sql_store (sql)``;
    ``note`` is a warning for the person (a correction, or why the tag signals nothing).
    Neither a meaning nor a note: the tag is simply unknown.
    """

    meaning: Meaning | None
    label: str = ""
    note: str | None = None


class Lexicon:
    """Maps the spellings of every known tag to its meaning.

    Built once from the registry and the shared vocabulary; lookups are dictionary hits.
    ``read`` handles the rest, a tag unknown as a whole: by its words, or as a misspelling
    (the rule is step 1 of selector.policy), memoised per distinct tag.
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
        # Words that are real in the vocabulary's own terms are never corrected into others.
        known = set(exact) | set(self._compact)
        known.update(word for key in exact for word in key.split("_"))
        self._known_words = frozenset(known)
        self._correctable = sorted(key for key in exact if len(key) >= _MIN_CORRECTABLE - 1)
        self.read = lru_cache(maxsize=_READINGS_CACHED)(self._read)

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

    def _read(self, raw: str) -> Reading:
        """Read a tag ``lookup`` does not know: by its words, then as a misspelling."""
        spelling = canonical_spelling(raw)
        tokens = split_tokens(raw)
        words = "_".join(tokens)
        phrases = self._phrases(tokens)
        if phrases:
            return self._combine(raw, words, tokens, phrases, corrected=False)
        if not self._is_real(tokens):
            corrected = self._correct(spelling)
            if corrected is not None:
                suggestion, meaning = corrected
                return Reading(
                    meaning,
                    f"{spelling} ({suggestion})",
                    f"feature tag {raw!r} read as {suggestion!r} ({meaning.category}): "
                    f"did you mean {suggestion!r}?",
                )
        fixed = []
        for token in tokens:
            if not self._is_real([token]):
                corrected = self._correct(token)
                if corrected is not None:
                    fixed.append(corrected)
        if fixed:
            return self._combine(raw, words, tokens, fixed, corrected=True)
        return Reading(None)

    def _is_real(self, tokens: list[str]) -> bool:
        """Whether every word is one the vocabulary uses or an English word: then the tag means
        what it says and is not corrected into something else."""
        if all(token in self._known_words for token in tokens):
            return True
        english = _english_words()
        return all(token in self._known_words or token in english for token in tokens)

    def _phrases(self, tokens: list[str]) -> list[tuple[str, Meaning]]:
        """The vocabulary spellings among ``tokens``, longest phrase first, left to right."""
        found: list[tuple[str, Meaning]] = []
        start = 0
        while start < len(tokens):
            for end in range(min(len(tokens), start + _LONGEST_PHRASE), start, -1):
                phrase = "_".join(tokens[start:end])
                meaning = self._resolve(phrase)
                if meaning is not None:
                    found.append((phrase, meaning))
                    start = end
                    break
            else:
                start += 1
        return found

    def _correct(self, spelling: str) -> tuple[str, Meaning] | None:
        """The one vocabulary spelling ``spelling`` is a close misspelling of, if there is one."""
        limit = _max_distance(spelling)
        if limit == 0:
            return None
        near = process.extract(
            spelling,
            self._correctable,
            scorer=DamerauLevenshtein.distance,
            score_cutoff=limit,
            limit=None,
        )
        if not near:
            return None
        best = min(distance for _, distance, _ in near)
        closest = [choice for choice, distance, _ in near if distance == best]
        meanings = {self._exact[choice] for choice in closest}
        if len(meanings) != 1:
            return None  # as close to two meanings: a guess would be a coin toss
        return closest[0], meanings.pop()

    def _combine(
        self,
        raw: str,
        spelling: str,
        tokens: list[str],
        phrases: list[tuple[str, Meaning]],
        *,
        corrected: bool,
    ) -> Reading:
        """One meaning for a tag from the meanings of its words (rule in selector.policy)."""
        negation = next((token for token in tokens if token in _NEGATIONS), None)
        if negation is not None:
            return Reading(
                None,
                note=f"feature tag {raw!r} ignored: {negation!r} turns its words "
                f"({', '.join(phrase for phrase, _ in phrases)}) around",
            )
        rank = max(_CATEGORY_RANK.get(m.category, _SIGNAL_RANK) for _, m in phrases)
        deciding = [
            (phrase, m)
            for phrase, m in phrases
            if _CATEGORY_RANK.get(m.category, _SIGNAL_RANK) == rank
        ]
        categories = {m.category for _, m in deciding}
        if len(categories) > 1:
            words = ", ".join(f"{phrase}: {m.category}" for phrase, m in deciding)
            return Reading(
                None,
                note=f"feature tag {raw!r} ignored: its words point to different places ({words})",
            )
        phrase, meaning = deciding[0]
        note = None
        if corrected:
            note = (
                f"feature tag {raw!r} read as {phrase!r} ({meaning.category}): "
                f"did you mean {phrase!r}?"
            )
        return Reading(meaning, f"{spelling} ({phrase})", note)
