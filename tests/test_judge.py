"""The judge's statistics and the probe generators, on hand-made inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import alias, direct, incontext, multihop, paraphrase
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import (
    assess_probes,
    benjamini_hochberg,
    chance_pool,
    clopper_pearson_upper,
    deltas,
    rank_p_value,
)
from unlearncheck.probes import Probe, Templates
from unlearncheck.scoring import ProbeScores


def test_clopper_pearson_upper_matches_known_values() -> None:
    # 0 of n: the bound solves (1 - p)^n = alpha.
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20))
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert clopper_pearson_upper(3, 10, 0.05) == pytest.approx(stats.beta.ppf(0.95, 4, 7))


def test_benjamini_hochberg_steps_up() -> None:
    # sorted: 0.01 <= 0.05/3, 0.03 <= 0.10/3, 0.04 <= 0.05: all rejected (Holm stops at 0.03).
    assert benjamini_hochberg([0.01, 0.04, 0.03], 0.05) == [True, True, True]
    assert benjamini_hochberg([0.01, 0.2, 0.03], 0.05) == [True, False, True]
    assert benjamini_hochberg([0.02, 0.2, 0.5], 0.05) == [False, False, False]  # 0.02 > 0.05/3
    assert benjamini_hochberg([0.2], 0.05) == [False]


def test_rank_p_value_counts_the_pool_at_or_above() -> None:
    pool = np.sort(np.array([0.0, 0.1, 0.2, 0.2, 0.9]))
    assert rank_p_value(0.95, pool) == pytest.approx(1 / 6)
    assert rank_p_value(0.2, pool) == pytest.approx(4 / 6)  # ties count against the fact
    assert rank_p_value(-1.0, pool) == 1.0


def _probe(controls: tuple[str, ...], answers: tuple[tuple[str, ...], ...] = ()) -> Probe:
    return Probe(
        "f", "direct", "question", "Where was X born?", "A", ("B", "C"), "X", controls, answers
    )


def test_deltas_against_controls_and_reference() -> None:
    probe = _probe(("P", "Q", "R"))
    scores = ProbeScores(0.9, ((0.1, 0.6, 0.3), (0.2, 0.4, 0.4), (0.3, 0.2, 0.5)))
    baseline, delta, chance = deltas(probe, scores, None)
    assert baseline == pytest.approx(0.2)
    assert delta == pytest.approx(0.7)
    assert chance[:, 0] == pytest.approx([0.1 - 0.25, 0.0, 0.3 - 0.15])  # leave-one-out
    assert chance[0, 1] == pytest.approx(0.6 - 0.3)
    ref = ProbeScores(0.8, ((0.1, 0.5, 0.4),) * 3)
    baseline, delta, chance = deltas(probe, scores, ref)
    assert (baseline, delta) == pytest.approx((0.8, 0.1))
    assert chance[:, 0] == pytest.approx([0.0, 0.1, 0.2])


def test_a_controls_own_answer_is_not_chance() -> None:
    probe = _probe(("P", "Q", "R"), (("B",), (), ("A", "C")))
    scores = ProbeScores(0.9, ((0.0, 1.0, 0.0), (0.2, 0.4, 0.4), (0.3, 0.2, 0.5)))
    baseline, _, chance = deltas(probe, scores, None)
    assert baseline == pytest.approx((0.0 + 0.2) / 2)  # R's own answer A is left out
    assert np.isnan(chance[0, 1]) and np.isnan(chance[2, 0]) and np.isnan(chance[2, 2])
    assert chance[1, 1] == pytest.approx(0.4 - 0.2)  # B: only R's 0.2 besides Q (P's is masked)


def test_a_facts_probes_are_one_cluster() -> None:
    """A subject the model guesses the same way on every phrasing is one chance draw, not n."""
    probe = _probe(("P", "Q"))
    same_guess = ProbeScores(0.2, ((0.9, 0.05, 0.05), (0.1, 0.45, 0.45)))
    group = assess_probes([probe] * 10, [same_guess] * 10, None, None, tolerance=0.2)
    effects = group.chance_effects()
    assert len(effects) == 6  # 2 controls x 3 options, each averaged over the 10 probes
    assert max(effects) == pytest.approx(0.8)
    pool = chance_pool([group])
    assert rank_p_value(group.effect, pool) > 0.05


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
            assert fact.subject not in probe.controls
            assert len(probe.control_answers) == len(probe.controls)
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


def test_controls_are_claim_subjects_with_a_distractor_answer_then_made_up_names(
    world: FactSet,
) -> None:
    claim = world.filter(lambda f: f.relation == "birth_city")
    ctx = ProbeContext(world, claim, Templates.load())
    fact = world["ada-vell/birth_city"]
    controls = ctx.controls(fact)
    assert len(controls) >= ctx.n_controls
    distractors = set(ctx.distractors(fact))
    real = [c for c in controls if c in claim.subjects()]
    assert real and all(ctx.object_of(c, "birth_city") in distractors for c in real)
    made_up = [c for c in controls if c not in real]
    known = {f.subject for f in world}
    assert made_up and not set(made_up) & known
    (probe, *_) = direct(fact, ctx)
    for control, answers in zip(probe.controls, probe.control_answers, strict=True):
        if control in real:
            assert answers == (ctx.object_of(control, "birth_city"),)
        else:  # a made-up name answers what the two subjects it borrows words from answer
            assert len(answers) == 2
    assert controls == ProbeContext(world, claim, Templates.load()).controls(fact)  # seeded


def test_controls_grow_until_the_claims_pool_can_reach_its_corrected_level(world: FactSet) -> None:
    """Without an original the claim's facts × attacks tests are corrected together: the pool
    must be able to give a p-value of alpha/m, so each fact draws controls enough for it."""
    claim = world.filter(lambda f: f.relation == "colour")
    plain = ProbeContext(world, claim, Templates.load())
    assert plain.n_controls == math.ceil(128 / 6)
    needed = ProbeContext(world, claim, Templates.load(), min_chance=math.ceil(6 * 7 / 0.05))
    assert needed.n_controls == math.ceil(840 / (6 * 3)) > plain.n_controls


def test_a_chain_through_a_landmark_has_landmark_controls_with_their_chain_answers_masked(
    tmp_path: Path,
) -> None:
    """ "The capital of the country where <landmark> is": its controls stand in the landmark's
    place (made-up landmarks), never countries, whose own answer to "the country where
    Netherlands is" would be a confident, unmasked distractor."""
    capitals = {"Kesh": "Orlo", "Brisca": "Vant", "Telora": "Pell", "Dunmar": "Sable"}
    landmarks = {"Tower of Orm": "Kesh", "Bay of Lune": "Brisca", "Gate of Sill": "Telora"}
    world = FactSet(
        [Fact(f"{c.lower()}/capital", c, "capital", city) for c, city in capitals.items()]
        + [Fact(f"{n.lower()}/loc", n, "location", c) for n, c in landmarks.items()]
    )
    claim = world.filter(lambda f: f.relation == "capital")
    templates = tmp_path / "landmarks.json"
    templates.write_text(json.dumps({"relations": _LANDMARK_TEMPLATES}))
    ctx = ProbeContext(world, claim, Templates.load(templates))
    fact = world["kesh/capital"]
    (chain,) = multihop(fact, ctx)
    assert chain.anchor == "Tower of Orm" and chain.form == "via:location"
    assert chain.controls and not set(chain.controls) & set(capitals)
    for control, answers in zip(chain.controls, chain.control_answers, strict=True):
        assert control not in world.subjects()  # made up from two landmarks' words
        assert answers and set(answers) <= set(capitals.values())  # their chain answers


_LANDMARK_TEMPLATES = {
    "capital": {"question": "What is the capital of {subject}?"},
    "location": {
        "question": "In which country is {subject}?",
        "noun": "the country where {subject} is",
    },
}


class _FixedScores:
    """A scoring model whose answers have given (sum log-prob, token count)."""

    spec = "fixed"
    content_hash = "fixed-scores"

    def __init__(self, scores: dict[str, tuple[float, int]]) -> None:
        self.scores = scores

    def score_answers(self, requests, *, batch_size=1):  # type: ignore[no-untyped-def]
        from unlearncheck.backends.scoring import AnswerScore

        return [AnswerScore(*self.scores[answer.strip()], False) for _, answer in requests]


def test_readouts_normalize_per_token_or_sum() -> None:
    from unlearncheck.scoring import Scorer

    # "long" has 4 tokens of log-prob -0.5 each (sum -2.0); "short" 1 token of -1.5.
    model = _FixedScores({"long": (-2.0, 4), "short": (-1.5, 1)})
    items = [("Q:", ["long", "short"])]
    (per_token,) = Scorer("token_mean").distributions(model, items)
    (total,) = Scorer("sum").distributions(model, items)
    assert per_token == pytest.approx(np.exp([-0.5, -1.5]) / np.exp([-0.5, -1.5]).sum())
    assert total == pytest.approx(np.exp([-2.0, -1.5]) / np.exp([-2.0, -1.5]).sum())
    assert per_token[0] > per_token[1] and total[0] < total[1]
    with pytest.raises(ValueError, match="unknown readout 'bytes'"):
        Scorer("bytes")  # type: ignore[arg-type]
