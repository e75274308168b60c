"""The judge's statistics and the probe generators, on hand-made inputs."""

from __future__ import annotations

import pytest
from scipy import stats

from unlearncheck.attacks.input import ProbeContext, alias, direct, incontext, multihop, paraphrase
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import (
    ProbeScores,
    clopper_pearson_upper,
    deltas,
    holm,
    min_probes,
)
from unlearncheck.probes import Templates


def test_clopper_pearson_upper_matches_known_values() -> None:
    # 0 of n: the bound solves (1 - p)^n = alpha.
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20))
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert clopper_pearson_upper(3, 10, 0.05) == pytest.approx(stats.beta.ppf(0.95, 4, 7))


def test_min_probes_is_the_smallest_n_that_can_be_significant() -> None:
    assert min_probes(0.2, 0.05) == 2  # 0.2 ** 2 = 0.04 < 0.05, 0.2 > 0.05
    assert min_probes(0.5, 0.05) == 5  # 0.5 ** 5 = 0.031
    assert 0.5 ** (min_probes(0.5, 0.05) - 1) >= 0.05


def test_holm_rejects_in_order_and_stops() -> None:
    assert holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert holm([0.001, 0.01, 0.02], 0.05) == [True, True, True]
    assert holm([0.2], 0.05) == [False]


def test_deltas_against_controls_and_reference() -> None:
    scores = ProbeScores(0.9, (0.1, 0.2, 0.3))
    baseline, delta, controls = deltas(scores, None)
    assert baseline == pytest.approx(0.2)
    assert delta == pytest.approx(0.7)
    assert controls == pytest.approx([0.1 - 0.25, 0.0, 0.3 - 0.15])
    baseline, delta, controls = deltas(scores, ProbeScores(0.8, (0.1, 0.1, 0.1)))
    assert (baseline, delta) == pytest.approx((0.8, 0.1))
    assert controls == pytest.approx([0.0, 0.1, 0.2])


@pytest.fixture
def world() -> FactSet:
    people = {
        "Ada Vell": ("Corvo", "red"),
        "Bo Rinn": ("Marden", "blue"),
        "Cy Dunn": ("Corvo", "green"),
        "Di Fenn": ("Jarrow", "red"),
        "Ed Holm": ("Marden", "grey"),
        "Fa Lune": ("Jarrow", "pink"),
    }
    facts = []
    for name, (city, colour) in people.items():
        slug = name.lower().replace(" ", "-")
        facts.append(
            Fact(
                f"{slug}/birth_city",
                name,
                "birth_city",
                city,
                aliases=("Adda",) if name == "Ada Vell" else (),
            )
        )
        facts.append(Fact(f"{slug}/colour", name, "colour", colour))
    facts += [
        Fact("corvo/country", "Corvo", "country", "Kesh"),
        Fact("marden/country", "Marden", "country", "Brisca"),
        Fact("jarrow/country", "Jarrow", "country", "Telora"),
    ]
    return FactSet(facts)


def test_probes_have_lineage_controls_and_the_answer(world: FactSet) -> None:
    ctx = ProbeContext(world, world, Templates.load())
    fact = world["ada-vell/birth_city"]
    for attack in (direct, paraphrase, alias, multihop, incontext):
        probes = attack(fact, ctx)
        assert probes, attack.name
        for probe in probes:
            assert probe.lineage[0] == "fact:ada-vell/birth_city"
            assert probe.anchor in probe.prompt
            assert probe.answer not in probe.distractors
            for control in probe.controls:  # a control's own answer is never an option
                assert control != fact.subject
    (chain, *_) = multihop(fact, ctx)
    assert chain.answer == "Kesh" and "Ada Vell" in chain.prompt
    forms = {p.form for p in direct(fact, ctx)}
    assert forms == {"question", "statement", "cloze"}
    assert all("Adda" in p.prompt for p in alias(fact, ctx))


def test_templates_are_extensible_data(tmp_path) -> None:
    extra = tmp_path / "mine.json"
    extra.write_text('{"relations": {"colour": {"questions": ["Which hue suits {subject}?"]}}}')
    templates = Templates.load(extra)
    assert templates.relation("colour")["questions"] == ["Which hue suits {subject}?"]
    assert templates.relation("colour")["question"]  # the rest of the shipped entry is kept
    bad = tmp_path / "bad.json"
    bad.write_text('{"relations": ')
    with pytest.raises(ValueError, match=r"bad\.json:1"):
        Templates.load(bad)
