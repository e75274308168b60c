"""Tests for unlearncheck.facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearncheck.facts import Fact, FactFormatError, FactSet, load_facts, load_tofu

BIRTH = Fact(
    id="varo-melin/birth_city",
    subject="Varo Melin",
    relation="birth_city",
    object="Tarsa",
    question="In which city was Varo Melin born?",
    statement="Varo Melin was born in Tarsa.",
    paraphrases=("Where was Varo Melin born?",),
    aliases=("V. Melin",),
    distractors=("Oskel", "Brann"),
    split="forget",
    metadata={"source": "synthetic", "difficulty": 2},
)
RIVER = Fact(id="tarsa/river", subject="Tarsa", relation="river", object="Alun", split="retain")
MAYOR = Fact(id="tarsa/mayor", subject="Tarsa", relation="mayor", object="Ilse Dorn")
WORK = Fact(id="varo-melin/employer", subject="Varo Melin", relation="employer", object="Kell")


@pytest.fixture
def facts() -> FactSet:
    return FactSet([BIRTH, RIVER, MAYOR, WORK])


def write_lines(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(**overrides: object) -> str:
    """Returns one JSONL line of a valid fact with ``overrides``; ``...`` drops a key."""
    base: dict[str, object] = {"id": "a", "subject": "S", "relation": "r", "object": "O"}
    base.update(overrides)
    return json.dumps({key: value for key, value in base.items() if value is not ...})


def assert_located(error: FactFormatError, path: Path, line: int, field: str | None) -> None:
    message = str(error)
    assert path.name in message
    assert f":{line}:" in message
    assert error.path == str(path)
    assert error.line == line
    assert error.field == field
    if field is not None:
        assert f"'{field}'" in message


def test_round_trip_through_jsonl(tmp_path: Path, facts: FactSet) -> None:
    path = tmp_path / "out.jsonl"
    facts.to_jsonl(path)
    loaded = load_facts(path)
    assert list(loaded) == list(facts)
    assert loaded["varo-melin/birth_city"].metadata == {"source": "synthetic", "difficulty": 2}
    assert list(load_facts(str(path))) == list(facts)


def test_to_dict_flattens_metadata_and_omits_unset_fields() -> None:
    assert BIRTH.to_dict()["source"] == "synthetic"
    assert "metadata" not in BIRTH.to_dict()
    assert RIVER.to_dict() == {
        "id": "tarsa/river",
        "subject": "Tarsa",
        "relation": "river",
        "object": "Alun",
        "split": "retain",
    }
    assert Fact.from_dict(BIRTH.to_dict()) == BIRTH


def test_unknown_keys_are_kept_as_read_only_metadata() -> None:
    fact = Fact.from_dict(json.loads(record(source="wiki", tags=["x"], metadata=1)))
    assert fact.metadata == {"source": "wiki", "tags": ["x"], "metadata": 1}
    with pytest.raises(TypeError):
        fact.metadata["source"] = "other"  # type: ignore[index]
    assert Fact.from_dict(fact.to_dict()) == fact


def test_facts_are_hashable_and_lists_become_tuples() -> None:
    fact = Fact(id="a", subject="S", relation="r", object="O", aliases=["s"])  # type: ignore[arg-type]
    assert fact.aliases == ("s",)
    assert len({BIRTH, fact, BIRTH}) == 2


def test_metadata_may_not_shadow_a_field() -> None:
    with pytest.raises(FactFormatError, match="'subject'"):
        Fact(id="a", subject="S", relation="r", object="O", metadata={"subject": "T"})


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path, record(id="a"), "", "   ", record(id="b"), record(id="c"))
    assert [fact.id for fact in load_facts(path)] == ["a", "b", "c"]
    bad = write_lines(tmp_path, record(id="a"), "", record(id="b", object=""))
    with pytest.raises(FactFormatError) as info:
        load_facts(bad)
    assert_located(info.value, bad, 3, "object")


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path, record(id="a"), record(id="b"), '{"id": "c",')
    with pytest.raises(FactFormatError) as info:
        load_facts(path)
    assert_located(info.value, path, 3, None)
    assert "invalid JSON" in str(info.value)


@pytest.mark.parametrize("value", ["[1, 2]", '"text"', "3", "null"])
def test_non_object_line(tmp_path: Path, value: str) -> None:
    path = write_lines(tmp_path, record(id="a"), value)
    with pytest.raises(FactFormatError, match="expected a JSON object") as info:
        load_facts(path)
    assert_located(info.value, path, 2, None)


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"object": ...}, "object", "missing required field"),
        ({"id": ...}, "id", "missing required field"),
        ({"object": ""}, "object", "must be a non-empty string, got str"),
        ({"subject": 7}, "subject", "must be a non-empty string, got int"),
        ({"relation": None}, "relation", "must be a non-empty string, got null"),
        ({"question": ["q"]}, "question", "must be a string or null, got list"),
        ({"split": 1}, "split", "must be a string or null, got int"),
        ({"aliases": "x"}, "aliases", "must be a list of strings, got str"),
        ({"paraphrases": ["ok", 3]}, "paraphrases", "item 1 must be a non-empty string, got int"),
        ({"distractors": [""]}, "distractors", "item 0 must be a non-empty string, got str"),
    ],
)
def test_invalid_field(
    tmp_path: Path, overrides: dict[str, object], field: str, reason: str
) -> None:
    path = write_lines(tmp_path, record(id="first"), record(id="second"), record(**overrides))
    with pytest.raises(FactFormatError) as info:
        load_facts(path)
    assert_located(info.value, path, 3, field)
    assert str(info.value) == f"{path}:3: field '{field}': {reason}"
    assert info.value.reason == reason


def test_optional_fields_accept_null() -> None:
    fact = Fact.from_dict(json.loads(record(question=None, split=None, aliases=None)))
    assert (fact.question, fact.split, fact.aliases) == (None, None, ())


def test_duplicate_id_in_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path, record(id="a"), record(id="b"), record(id="a"))
    with pytest.raises(FactFormatError, match=r"duplicate id 'a' \(first on line 1\)") as info:
        load_facts(path)
    assert_located(info.value, path, 3, "id")


def test_duplicate_id_in_constructor() -> None:
    with pytest.raises(FactFormatError, match="duplicate id 'tarsa/river'") as info:
        FactSet([RIVER, BIRTH, RIVER])
    assert info.value.field == "id"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_facts(path)
    assert str(path) in str(info.value)


def test_error_without_path() -> None:
    with pytest.raises(FactFormatError) as info:
        Fact.from_dict({"id": "a"}, line=4)
    assert str(info.value) == "line 4: field 'subject': missing required field"
    with pytest.raises(FactFormatError, match=r"^expected a JSON object, got list$"):
        Fact.from_dict([])  # type: ignore[arg-type]


def test_indexing(facts: FactSet) -> None:
    assert facts[0] is BIRTH
    assert facts[-1] is WORK
    assert facts["varo-melin/birth_city"] is BIRTH
    assert facts.by_id("tarsa/river") is RIVER
    head = facts[1:3]
    assert isinstance(head, FactSet)
    assert list(head) == [RIVER, MAYOR]
    assert len(facts) == 4
    assert "tarsa/mayor" in facts and MAYOR in facts
    assert "nope" not in facts and 3 not in facts
    with pytest.raises(KeyError, match="nope"):
        facts["nope"]
    with pytest.raises(IndexError):
        facts[10]


def test_queries(facts: FactSet) -> None:
    assert list(facts.split("forget")) == [BIRTH]
    assert list(facts.split("retain")) == [RIVER]
    assert facts.subjects() == ["Tarsa", "Varo Melin"]
    assert facts.relations() == ["birth_city", "employer", "mayor", "river"]
    assert facts.objects_of("birth_city") == ["Tarsa"]
    assert facts.objects_of("unknown") == []
    assert list(facts.about("Varo Melin")) == [BIRTH, WORK]
    assert list(facts.filter(lambda fact: fact.object.startswith("A"))) == [RIVER]
    assert repr(facts) == "FactSet(4 facts)"


def test_next_hops(facts: FactSet) -> None:
    assert list(facts.next_hops(BIRTH)) == [RIVER, MAYOR]
    assert list(facts.next_hops(RIVER)) == []


TOFU_ROWS = [
    {
        "question": "Who wrote The Glass Tide?",
        "answer": "Ama Osei",
        "paraphrased_question": "The Glass Tide was written by whom?",
        "perturbed_answer": ["Kofi Mensah", "Lena Park"],
        "paraphrased_answer": "It was written by Ama Osei.",
    },
    {
        "id": "custom",
        "question": "Where was Ama Osei born?",
        "answer": "Accra",
        "paraphrased_question": ["Ama Osei's birthplace?", "Ama Osei was born where?"],
    },
]


def test_load_tofu_json_list(tmp_path: Path) -> None:
    path = tmp_path / "forget01.json"
    path.write_text(json.dumps(TOFU_ROWS, indent=2), encoding="utf-8")
    facts = load_tofu(path, split="forget")
    assert [fact.id for fact in facts] == ["tofu/0", "custom"]
    first = facts["tofu/0"]
    assert first.subject == first.question == "Who wrote The Glass Tide?"
    assert first.relation == "qa"
    assert first.object == "Ama Osei"
    assert first.paraphrases == ("The Glass Tide was written by whom?",)
    assert first.distractors == ("Kofi Mensah", "Lena Park")
    assert first.split == "forget"
    assert first.metadata == {"paraphrased_answer": "It was written by Ama Osei."}
    second = facts["custom"]
    assert second.paraphrases == ("Ama Osei's birthplace?", "Ama Osei was born where?")
    assert second.distractors == ()


def test_load_tofu_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "retain.json"
    path.write_text("\n".join(json.dumps(row) for row in TOFU_ROWS) + "\n", encoding="utf-8")
    facts = load_tofu(str(path), relation="authors")
    assert facts.relations() == ["authors"]
    assert [fact.split for fact in facts] == [None, None]
    out = tmp_path / "facts.jsonl"
    facts.to_jsonl(out)
    assert list(load_facts(out)) == list(facts)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"answer": "A"}, "question"),
        ({"question": "Q?", "answer": 3}, "answer"),
        ({"question": "Q?", "answer": "A", "perturbed_answer": ["B", None]}, "perturbed_answer"),
        ({"question": "Q?", "answer": "A", "paraphrased_question": 5}, "paraphrased_question"),
        ({"question": "Q?", "answer": "A", "id": 12}, "id"),
        ({"question": "Q?", "answer": "A", "subject": "S"}, "subject"),
    ],
)
def test_load_tofu_errors(tmp_path: Path, row: dict[str, object], field: str) -> None:
    path = tmp_path / "tofu.json"
    path.write_text(json.dumps([TOFU_ROWS[0], row]), encoding="utf-8")
    with pytest.raises(FactFormatError) as info:
        load_tofu(path)
    assert_located(info.value, path, 2, field)


def test_load_tofu_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "tofu.json"
    path.write_text(json.dumps([TOFU_ROWS[0], "oops"]), encoding="utf-8")
    with pytest.raises(FactFormatError, match="expected a JSON object, got str") as info:
        load_tofu(path)
    assert_located(info.value, path, 2, None)
    path.write_text(json.dumps([TOFU_ROWS[1], TOFU_ROWS[1]]), encoding="utf-8")
    with pytest.raises(FactFormatError, match="duplicate id 'custom'") as info:
        load_tofu(path)
    assert_located(info.value, path, 2, "id")
    path.write_text('[\n  {"question": "Q?",\n  "answer": }\n]', encoding="utf-8")
    with pytest.raises(FactFormatError, match="invalid JSON") as info:
        load_tofu(path)
    assert_located(info.value, path, 3, None)
