"""Facts and fact sets: the knowledge that an unlearning claim says is gone (or kept).

A fact is one ``(subject, relation, object)`` triple plus the text used to probe for it. Facts
are stored one JSON object per line; keys that are not fields of :class:`Fact` are kept in
:attr:`Fact.metadata` and written back at the top level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

__all__ = ["MAX_LINE_BYTES", "Fact", "FactFormatError", "FactSet", "load_facts", "load_tofu"]


class FactFormatError(ValueError):
    """A fact record, or a file of them, is malformed.

    Attributes:
        path: The file the record came from, if any.
        line: The 1-based line (or row) of the record, if known.
        field: The offending field, if the problem is in one field.
        reason: The message without the location prefix.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = reason
        prefix = []
        if self.path is not None:
            prefix.append(self.path if line is None else f"{self.path}:{line}")
        elif line is not None:
            prefix.append(f"line {line}")
        if field is not None:
            prefix.append(f"field {field!r}")
        super().__init__(": ".join([*prefix, reason]))


@dataclass(frozen=True)
class Fact:
    """One fact, with the text used to ask about it.

    Attributes:
        id: Unique id within a fact set, e.g. ``"varo-melin/birth_city"``.
        subject: The entity the fact is about.
        relation: The relation name, e.g. ``"birth_city"``.
        object: The answer that should (or should not) be recalled.
        question: A question whose answer is ``object``.
        statement: A declarative sentence stating the fact.
        paraphrases: Other wordings of ``question``.
        aliases: Other names of ``subject``.
        distractors: Plausible wrong answers.
        split: The split the fact belongs to, e.g. ``"forget"`` or ``"retain"``.
        metadata: Any other keys of the source record (read-only; not part of the hash).
        source: The first fact set the fact was put in (the graph multi-hop probes walk and
            the pool of controls); set by ``FactSet``, not part of equality or the record.
    """

    id: str
    subject: str
    relation: str
    object: str
    question: str | None = None
    statement: str | None = None
    paraphrases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: FactSet | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name in _LIST_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for key in self.metadata:
            if key in _FIELD_NAMES:
                raise FactFormatError("metadata key clashes with a Fact field", field=key)
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def to_dict(self) -> dict[str, Any]:
        """Returns the fact as a JSON-ready dict that :meth:`from_dict` reads back.

        Unset optional fields are left out and metadata keys are placed at the top level.
        """
        record: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if value is not None and value != ():
                record[name] = list(value) if isinstance(value, tuple) else value
        record.update(self.metadata)
        return record

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str | Path | None = None, line: int | None = None
    ) -> Fact:
        """Builds a fact from a decoded JSON object, validating every field.

        Args:
            d: The record. Keys that are not fields of :class:`Fact` go to ``metadata``.
            path: The file the record came from, used in error messages.
            line: The record's 1-based line, used in error messages.

        Returns:
            The fact.

        Raises:
            FactFormatError: If ``d`` is not a mapping, a required field is missing or not a
                non-empty string, an optional text field is neither a string nor null, or a
                list field is not a list of non-empty strings.
        """
        if not isinstance(d, Mapping):
            raise FactFormatError(f"expected a JSON object, got {_kind(d)}", path=path, line=line)
        fact = cls(
            id=_required_text(d, "id", path, line),
            subject=_required_text(d, "subject", path, line),
            relation=_required_text(d, "relation", path, line),
            object=_required_text(d, "object", path, line),
            question=_optional_text(d, "question", path, line),
            statement=_optional_text(d, "statement", path, line),
            paraphrases=_text_list(d, "paraphrases", path, line),
            aliases=_text_list(d, "aliases", path, line),
            distractors=_text_list(d, "distractors", path, line),
            split=_optional_text(d, "split", path, line),
            metadata={key: value for key, value in d.items() if key not in _FIELD_NAMES},
        )
        _check_distractors(fact, path, line)
        return fact


def _check_distractors(fact: Fact, path: str | Path | None, line: int | None) -> None:
    """Refuse distractors that make p̂ meaningless: the answer itself, or one given twice.

    Raises:
        FactFormatError: Naming the distractor, at the fact's line and field.
    """
    seen = {fact.object.strip().casefold(): "the object"}
    for position, distractor in enumerate(fact.distractors):
        key = distractor.strip().casefold()
        if key in seen:
            raise FactFormatError(
                f"distractor {position} {distractor!r} is the same as {seen[key]}: an option "
                "equal to the answer or to another option makes the normalized probability "
                "meaningless",
                path=path,
                line=line,
                field="distractors",
            )
        seen[key] = f"distractor {position}"


_LIST_FIELDS = ("paraphrases", "aliases", "distractors")
_FIELD_NAMES = tuple(f.name for f in fields(Fact) if f.name not in ("metadata", "source"))


class FactSet(Sequence[Fact]):
    """An ordered, immutable collection of facts with unique ids.

    Indexing accepts a position, a slice (giving a ``FactSet``) or a fact id.
    """

    def __init__(self, facts: Iterable[Fact] = ()) -> None:
        """Builds a fact set.

        Args:
            facts: The facts, in order.

        Raises:
            FactFormatError: If two facts share an id.
        """
        self._facts = tuple(facts)
        self._by_id: dict[str, Fact] = {}
        for fact in self._facts:
            if fact.id in self._by_id:
                raise FactFormatError(f"duplicate id {fact.id!r}", field="id")
            self._by_id[fact.id] = fact
            if fact.source is None:
                object.__setattr__(fact, "source", self)

    def to_jsonl(self, path: str | Path) -> None:
        """Writes the facts to ``path``, one JSON object per line, in UTF-8."""
        with Path(path).open("w", encoding="utf-8") as handle:
            for fact in self._facts:
                handle.write(json.dumps(fact.to_dict(), ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self._facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self._facts)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        return isinstance(item, Fact) and self._by_id.get(item.id) == item

    @overload
    def __getitem__(self, key: int) -> Fact: ...

    @overload
    def __getitem__(self, key: str) -> Fact: ...

    @overload
    def __getitem__(self, key: slice) -> FactSet: ...

    def __getitem__(self, key: int | str | slice) -> Fact | FactSet:
        if isinstance(key, str):
            return self.by_id(key)
        if isinstance(key, slice):
            return FactSet(self._facts[key])
        return self._facts[key]

    def __repr__(self) -> str:
        return f"FactSet({len(self)} facts)"

    def by_id(self, id: str) -> Fact:
        """Returns the fact with the given id.

        Raises:
            KeyError: If there is no such fact.
        """
        try:
            return self._by_id[id]
        except KeyError:
            raise KeyError(f"no fact with id {id!r}") from None

    def filter(self, predicate: Callable[[Fact], bool]) -> FactSet:
        """Returns the facts for which ``predicate`` is true, in order."""
        return FactSet(fact for fact in self._facts if predicate(fact))

    def split(self, name: str) -> FactSet:
        """Returns the facts whose ``split`` is ``name``."""
        return self.filter(lambda fact: fact.split == name)

    def about(self, subject: str) -> FactSet:
        """Returns the facts whose ``subject`` is ``subject``."""
        return self._by_subject.get(subject) or FactSet()

    @cached_property
    def _by_subject(self) -> dict[str, FactSet]:
        grouped: dict[str, list[Fact]] = {}
        for fact in self._facts:
            grouped.setdefault(fact.subject, []).append(fact)
        return {subject: FactSet(group) for subject, group in grouped.items()}

    def next_hops(self, fact: Fact) -> FactSet:
        """Returns the facts whose subject is ``fact.object``: the second hops of a chain."""
        return self.about(fact.object)

    def subjects(self) -> list[str]:
        """Returns the distinct subjects, sorted."""
        return sorted({fact.subject for fact in self._facts})

    def relations(self) -> list[str]:
        """Returns the distinct relations, sorted."""
        return sorted({fact.relation for fact in self._facts})

    def objects_of(self, relation: str) -> list[str]:
        """Returns the distinct objects of ``relation``, sorted."""
        return list(self._objects_by_relation.get(relation, ()))

    @cached_property
    def _objects_by_relation(self) -> dict[str, tuple[str, ...]]:
        grouped: dict[str, set[str]] = {}
        for fact in self._facts:
            grouped.setdefault(fact.relation, set()).add(fact.object)
        return {relation: tuple(sorted(objects)) for relation, objects in grouped.items()}


def load_facts(path: str | Path) -> FactSet:
    """Reads a JSONL file of facts, one :meth:`Fact.from_dict` record per line.

    Blank lines are skipped but still counted, so line numbers in errors match an editor's.

    Args:
        path: The file to read.

    Returns:
        The facts, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        FactFormatError: If the file holds no facts, or a line is longer than
            `MAX_LINE_BYTES`, is not UTF-8 or not valid JSON, is not an object, holds an invalid
            record, or repeats an id.
    """
    rows = []
    for line, text in _nonblank_lines(path):
        rows.append((line, Fact.from_dict(_decode(text, path, line), path=path, line=line)))
    return _fact_set(rows, path)


_TOFU_FIELDS = frozenset({"id", "question", "answer", "paraphrased_question", "perturbed_answer"})


def load_tofu(path: str | Path, *, relation: str = "qa", split: str | None = None) -> FactSet:
    """Imports TOFU-style question/answer data as facts.

    The file is either one JSON list of objects or JSONL. Each row needs ``question`` and
    ``answer`` strings and may have ``paraphrased_question`` (a string or list of strings),
    ``perturbed_answer`` (a string or list of strings) and ``id``. A row becomes a fact whose
    subject and question are the question text, whose object is the answer, whose paraphrases
    are the paraphrased questions and whose distractors are the perturbed answers. Any other
    key (``paraphrased_answer`` for instance) goes to ``metadata``.

    Args:
        path: The file to read.
        relation: The relation given to every fact.
        split: The split given to every fact.

    Returns:
        The facts; a row without ``id`` gets ``f"tofu/{index}"`` with its 0-based row index.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        FactFormatError: If the file or a row is malformed; errors name the row's 1-based line
            (JSONL) or position (JSON list), and the TOFU field at fault.
    """
    text = _decode_utf8(Path(path).read_bytes(), path, 1)
    if text.lstrip().startswith("["):
        data = _decode(text, path, None)
        numbered = list(enumerate(data, start=1))
    else:
        numbered = [(line, _decode(row, path, line)) for line, row in _nonblank_lines(path)]
    rows = []
    for index, (line, row) in enumerate(numbered):
        if not isinstance(row, dict):
            raise FactFormatError(f"expected a JSON object, got {_kind(row)}", path=path, line=line)
        question = _required_text(row, "question", path, line)
        metadata = {key: value for key, value in row.items() if key not in _TOFU_FIELDS}
        for key in metadata:
            if key in _FIELD_NAMES:
                raise FactFormatError("clashes with a Fact field", path=path, line=line, field=key)
        fact = Fact(
            id=_required_text(row, "id", path, line) if "id" in row else f"tofu/{index}",
            subject=question,
            relation=relation,
            object=_required_text(row, "answer", path, line),
            question=question,
            paraphrases=_text_list(row, "paraphrased_question", path, line, allow_str=True),
            distractors=_text_list(row, "perturbed_answer", path, line, allow_str=True),
            split=split,
            metadata=metadata,
        )
        rows.append((line, fact))
    return _fact_set(rows, path)


#: Longest line of a facts file, in bytes with its line break: a longer one is refused unread.
MAX_LINE_BYTES = 1 << 20


def _nonblank_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """The (1-based number, text) of each non-blank line.

    Raises:
        FactFormatError: A line is longer than `MAX_LINE_BYTES` or is not UTF-8.
    """
    with Path(path).open("rb") as handle:
        for line, data in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(data) > MAX_LINE_BYTES:
                raise FactFormatError(
                    f"line longer than {MAX_LINE_BYTES} bytes", path=path, line=line
                )
            text = _decode_utf8(data, path, line)
            if text.strip():
                yield line, text


def _decode_utf8(data: bytes, path: str | Path, first_line: int) -> str:
    """``data`` (which starts on line ``first_line`` of ``path``) decoded from UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        byte = data[error.start]
        raise FactFormatError(f"not UTF-8: byte 0x{byte:02x}", path=path, line=line) from error


def _decode(text: str, path: str | Path, line: int | None) -> Any:
    """The JSON value of ``text``.

    Raises:
        FactFormatError: At ``line`` (or the error's line): invalid JSON, a number with more
            digits than Python reads (4,300), or arrays and objects nested too deeply.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = error.lineno if line is None else line
        raise FactFormatError(f"invalid JSON: {error}", path=path, line=line) from error
    except ValueError as error:  # int() of a literal over sys.get_int_max_str_digits() digits
        raise FactFormatError(f"invalid JSON: {error}", path=path, line=line) from error
    except RecursionError as error:
        reason = "invalid JSON: arrays or objects nested too deeply to read"
        raise FactFormatError(reason, path=path, line=line) from error


def _fact_set(rows: Sequence[tuple[int, Fact]], path: str | Path) -> FactSet:
    if not rows:
        raise FactFormatError("holds no facts (empty, or only blank lines)", path=path)
    first_line: dict[str, int] = {}
    for line, fact in rows:
        if fact.id in first_line:
            raise FactFormatError(
                f"duplicate id {fact.id!r} (first on line {first_line[fact.id]})",
                path=path,
                line=line,
                field="id",
            )
        first_line[fact.id] = line
    return FactSet(fact for _, fact in rows)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required_text(
    record: Mapping[str, Any], key: str, path: str | Path | None, line: int | None
) -> str:
    if key not in record:
        raise FactFormatError("missing required field", path=path, line=line, field=key)
    value = record[key]
    if not isinstance(value, str) or not value:
        raise FactFormatError(
            f"must be a non-empty string, got {_kind(value)}", path=path, line=line, field=key
        )
    return value


def _optional_text(
    record: Mapping[str, Any], key: str, path: str | Path | None, line: int | None
) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise FactFormatError(
            f"must be a string or null, got {_kind(value)}", path=path, line=line, field=key
        )
    return value


def _text_list(
    record: Mapping[str, Any],
    key: str,
    path: str | Path | None,
    line: int | None,
    *,
    allow_str: bool = False,
) -> tuple[str, ...]:
    value = record.get(key)
    if value is None:
        return ()
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise FactFormatError(
            f"must be a list of strings, got {_kind(value)}", path=path, line=line, field=key
        )
    for position, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise FactFormatError(
                f"item {position} must be a non-empty string, got {_kind(item)}",
                path=path,
                line=line,
                field=key,
            )
    return tuple(value)
