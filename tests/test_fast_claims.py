"""The claim path end to end on tiny checkpoints made in the session (no organism zoo).

A random 2-layer GPT-2 (`tiny_checkpoint`) is fine-tuned on six made-up facts until it answers
them; that model FAILs ``assert_forgotten`` with ``direct``, the random model PASSes it against the
trained one as ``original`` and is INCONCLUSIVE against itself (an original that knows nothing
proves nothing), and ``assert_retained`` tells the two apart. Each claim writes its run log; the
pytest plugin runs a claim on its fixtures in a pytest session of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearncheck import assert_forgotten, assert_retained
from unlearncheck.attacks import direct
from unlearncheck.claims import fact_verdict
from unlearncheck.facts import FactSet
from unlearncheck.runlog import read_runlog
from unlearncheck.verdict import (
    AttackOutcome,
    ForgettingAssertionError,
    InconclusiveError,
    Verdict,
)

pytest_plugins = ["pytester"]


def _logged(path: Path) -> tuple[list[dict], list[dict]]:
    """The verdict and case records of a run log."""
    records = list(read_runlog(path))
    return [r for r in records if r["kind"] == "verdict"], [
        r for r in records if r["kind"] == "case"
    ]


def test_a_model_that_knows_its_facts_fails_assert_forgotten(
    trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    with pytest.raises(ForgettingAssertionError) as caught:
        assert_forgotten(str(trained), homes, [direct], runlog=log)
    verdict: Verdict = caught.value.verdict
    assert verdict.status == "FAIL"
    assert [v.fact_id for v in verdict.facts] == [f.id for f in homes]
    failed = [fact for fact in verdict.facts if fact.status == "FAIL"]
    assert len(failed) >= 4  # 6 of 6 with torch's default threads here, 5 with one thread
    for fact in failed:
        (outcome,) = fact.attacks
        assert outcome.outcome == "recovered" and outcome.significant and outcome.effect > 0.5
    verdicts, cases = _logged(log)
    assert [v["status"] for v in verdicts] == ["FAIL"]
    assert {c["fact_id"] for c in cases} >= {f.id for f in homes}


def test_the_random_model_passes_against_the_trained_original(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    verdict = assert_forgotten(
        str(tiny_checkpoint),
        homes,
        [direct],
        original=str(trained),
        runlog=log,
        on_inconclusive="return",
    )
    statuses = [v.status for v in verdict.facts]
    # A fact the tiny trained original does not know beyond its controls is INCONCLUSIVE (one
    # of six when trained on one thread); the others pass.
    assert "FAIL" not in statuses and statuses.count("PASS") >= 4
    verdicts, _ = _logged(log)
    assert [v["status"] for v in verdicts] == [verdict.status]


def test_an_original_that_knows_nothing_makes_every_fact_inconclusive(
    tiny_checkpoint: Path, homes: FactSet, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    spec = str(tiny_checkpoint)
    with pytest.raises(InconclusiveError):
        assert_forgotten(spec, homes, [direct], original=spec, runlog=log)
    verdict = assert_forgotten(
        spec, homes, [direct], original=spec, on_inconclusive="return", runlog=log
    )
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        assert fact.status == "INCONCLUSIVE"
        assert "original model does not know" in fact.reason
    verdicts, _ = _logged(log)
    assert [v["status"] for v in verdicts] == ["INCONCLUSIVE", "INCONCLUSIVE"]


def test_facts_the_original_never_knew_are_never_failed(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    """The trained model states every fact (its direct probes are recovered), but the original
    given, the random model, knows none of them: INCONCLUSIVE, not FAIL."""
    verdict = assert_forgotten(
        str(trained),
        homes,
        [direct],
        original=str(tiny_checkpoint),
        on_inconclusive="return",
        runlog=tmp_path / "run.jsonl",
    )
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        assert fact.status == "INCONCLUSIVE" and "original model does not know" in fact.reason


def test_a_recovery_of_what_the_original_never_knew_is_inconclusive_not_fail(
    homes: FactSet,
) -> None:
    """One probe may survive the exclusion of what the original does not answer and come out
    significant; the original's ignorance still decides the fact."""
    fact = homes[0]
    recovered = AttackOutcome("direct", "recovered", p_value=0.03, effect=0.4, significant=True)
    unknown = AttackOutcome("original knows", "not recovered", reason="p=0.41")
    verdict = fact_verdict(fact, [recovered], unknown)
    assert verdict.status == "INCONCLUSIVE" and "original model does not know" in verdict.reason
    assert fact_verdict(fact, [recovered], None).status == "FAIL"  # no original: it counts


def test_power_counts_only_for_an_attack_that_ran_on_the_model(homes: FactSet) -> None:
    """An optional attack that did not run on the model (an endpoint without weights) may still
    recover the fact from the original: that vouches for nothing, so no PASS."""
    fact = homes[0]
    known = AttackOutcome("original knows", "recovered", significant=True)
    skipped = AttackOutcome("quant4", "not run", reason="needs weights", power=True)
    powerless = AttackOutcome("direct", "not recovered", p_value=0.5, power=False)
    verdict = fact_verdict(fact, [powerless, skipped], known)
    assert verdict.status == "INCONCLUSIVE" and "no attack with power" in verdict.reason
    ran = AttackOutcome("direct", "not recovered", p_value=0.5, power=True)
    assert fact_verdict(fact, [ran, skipped], known).status == "PASS"


def test_assert_retained_passes_the_trained_model_and_fails_the_random_one(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    kept = assert_retained(str(trained), homes, original=str(trained), runlog=log)
    assert kept.status == "PASS" and "FAIL" not in {v.status for v in kept.facts}
    with pytest.raises(ForgettingAssertionError) as caught:
        assert_retained(str(tiny_checkpoint), homes, original=str(trained), runlog=log)
    assert caught.value.verdict.status == "FAIL"
    statuses = [v.status for v in caught.value.verdict.facts]
    assert "PASS" not in statuses and statuses.count("FAIL") >= 4
    verdicts, _ = _logged(log)
    assert [(v["claim"], v["status"]) for v in verdicts] == [
        (kept.claim, "PASS"),
        (caught.value.verdict.claim, "FAIL"),
    ]


#: A suite of one claim on the plugin's fixtures; ``uc_options`` are dumped to options.json.
SUITE = """
import dataclasses, json
from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct


def test_forgotten(unlearned, original, facts, uc_options, pytestconfig):
    out = pytestconfig.rootpath / "options.json"
    out.write_text(json.dumps(dataclasses.asdict(uc_options), default=str))
    assert_forgotten(unlearned, facts, [direct], original=original, seed=uc_options.seed)
"""


def test_the_plugin_runs_a_claim_on_its_fixtures_and_writes_log_and_report(
    pytester: pytest.Pytester, trained: Path, homes: FactSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNLEARNCHECK_CACHE", str(pytester.path / "cache"))  # no zoo needed
    facts = pytester.path / "data" / "facts.jsonl"
    facts.parent.mkdir()
    facts.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in homes))
    pytester.makeini(f"[pytest]\nuc_model = {trained}\nuc_facts = data/facts.jsonl\nuc_seed = 5\n")
    pytester.makeconftest(
        "from unlearncheck.pytest_plugin import set_defaults\n"
        "def pytest_configure(config):\n"
        "    set_defaults(config, seed='7', report='out/r.html', cache='off')\n"
    )
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--uc-original={trained}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ForgettingAssertionError*",
            "*= unlearncheck =*",
            "claims: 0 passed, 1 failed, 0 inconclusive, in 1 tests: 1 failed (*",
            "*direct*judged*recovered (FAIL)*not run, power*%*",
            f"HTML report: {pytester.path / 'out' / 'r.'}*.html (latest: "
            f"{pytester.path / 'out' / 'r.html'})",
        ]
    )
    options = json.loads((pytester.path / "options.json").read_text())
    assert (options["model"], options["original"]) == (str(trained), str(trained))
    assert options["facts"] == str(facts) and options["seed"] == 5  # ini over the default
    assert options["cache"] is None and options["json"] == str(pytester.path / "out" / "r.jsonl")
    verdicts, cases = _logged(pytester.path / "out" / "r.jsonl")
    assert [(v["test"], v["status"], v["outcome"]) for v in verdicts] == [
        ("test_suite.py::test_forgotten", "FAIL", "failed")
    ]
    judged = {f["fact_id"] for f in verdicts[0]["facts"] if f["status"] != "INCONCLUSIVE"}
    assert {c["fact_id"] for c in cases} >= judged and len(judged) >= 4
    assert (pytester.path / "out" / "r.html").stat().st_size > 0
    assert not list((pytester.path / "out").glob(".*.cases"))  # merged into the run log


class Unrelated:
    """An attack with no power: each fact's direct probes asked after an unrelated prompt, so the
    answer cannot be read from them even where it is known."""

    name = "unrelated"
    needs = frozenset({"scores"})

    def run(self, facts, context, models, scorer):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        from unlearncheck.attacks.input import direct as ask

        probes = {
            f.id: [replace(p, prompt="the weather is") for p in ask(f, context)[:1]]
            for f in context.claim
        }
        return scorer.judge(self.name, probes, models)


def test_a_pass_is_earned_by_an_attack_with_power_on_the_original(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    """Each attack is run on the original too: a fact passes only when some attack recovers it
    there (power); one that recovers nothing anywhere earns no PASS."""
    spec, original = str(tiny_checkpoint), str(trained)
    options = {"original": original, "on_inconclusive": "return", "runlog": tmp_path / "r.jsonl"}
    verdict = assert_forgotten(spec, homes, [direct, Unrelated()], **options)  # type: ignore[arg-type]
    power = verdict.power()
    assert power["unrelated"] == 0 and power["direct"] is not None and power["direct"] >= 4 / 6
    assert [f.status for f in verdict.facts].count("PASS") >= 4
    assert "power on the original: direct" in verdict.summary()
    for fact in verdict.facts:  # (a fact the trained model does not know is INCONCLUSIVE)
        assert "on_original" in fact.outcome("direct").extra
        if fact.status == "PASS":
            assert fact.outcome("direct").power and "power shown by direct" in fact.reason
    alone = assert_forgotten(spec, homes, [Unrelated()], **options)  # type: ignore[arg-type]
    assert alone.status == "INCONCLUSIVE"
    assert all(
        "no attack with power" in f.reason for f in alone.facts if "original" not in f.reason
    )
    assert {f.outcome("unrelated").outcome for f in alone.facts} == {"not run"}
    assert not any(f.outcome("unrelated").blocking for f in alone.facts)  # it ran, powerless
    verdicts, _ = _logged(tmp_path / "r.jsonl")
    assert verdicts[0]["facts"][0]["attacks"][0]["power"] is not None
    from unlearncheck.report import render_report

    page = render_report(tmp_path / "r.jsonl", tmp_path / "r.html").read_text(encoding="utf-8")
    assert "power on the original: direct" in page and "unrelated 0%" in page


def test_without_an_original_a_pass_says_power_was_not_measured(
    tiny_checkpoint: Path, homes: FactSet, tmp_path: Path
) -> None:
    verdict = assert_forgotten(str(tiny_checkpoint), homes, [direct], runlog=tmp_path / "r.jsonl")
    assert verdict.status == "PASS"
    assert all("power not measured" in f.reason for f in verdict.facts)
    assert verdict.power() == {"direct": None}
    assert "power not measured (no original model)" in verdict.summary()


def test_an_attack_with_no_probe_for_a_fact_blocks_its_pass_unless_optional(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    """The facts have no aliases: ``alias`` cannot ask them. Requested, that keeps every fact
    from passing; marked optional, the facts pass on ``direct``."""
    from unlearncheck.attacks import alias, optional

    options = {
        "original": str(trained),
        "on_inconclusive": "return",
        "runlog": tmp_path / "r.jsonl",
    }
    spec = str(tiny_checkpoint)
    blocked = assert_forgotten(spec, homes, [direct, alias], **options)  # type: ignore[arg-type]
    assert blocked.status == "INCONCLUSIVE"
    assert all(f.status == "INCONCLUSIVE" for f in blocked.facts)
    assert any("not run: alias (no probe applies" in f.reason for f in blocked.facts)
    allowed = assert_forgotten(spec, homes, [direct, optional(alias)], **options)  # type: ignore[arg-type]
    statuses = [f.status for f in allowed.facts]
    assert "FAIL" not in statuses and statuses.count("PASS") >= 4
    assert all(not f.outcome("alias").blocking for f in allowed.facts)


def test_a_chance_pool_too_small_for_the_corrected_level_is_not_run(
    tiny_checkpoint: Path, homes: FactSet, tmp_path: Path
) -> None:
    """Without an original (no measured power), a test whose least p-value, 1/(1 + pool), is
    above alpha/m could not have found the fact had it leaked alone: "not run", never PASS."""
    few = FactSet(list(homes)[:2])
    verdict = assert_forgotten(
        str(tiny_checkpoint),
        few,
        [direct],
        context=few,
        alpha=0.01,
        on_inconclusive="return",
        runlog=tmp_path / "r.jsonl",
    )
    outcome = verdict.facts[0].outcome("direct")
    assert outcome.null_n + 1 < 2 / 0.01  # the pool cannot reach alpha/m
    assert verdict.status == "INCONCLUSIVE" and outcome.outcome == "not run" and outcome.blocking
    assert "cannot reach the corrected level" in outcome.reason


class PrefersAWrongAnswer:
    """`trained` read through a wrapper that, on its fill-in-the-blank prompts, gives one wrong
    option 1.05 times the answer's probability: the answer stays far above chance on the other
    forms (the fact is still "known"), but one form in three no longer answers it."""

    capabilities = frozenset({"scores"})
    cacheable = False

    def __init__(self, model: object, wrong: dict[str, tuple[str, str]]) -> None:
        self._model = model
        self._wrong = wrong  # subject -> (answer, the wrong option preferred)
        self.spec = f"prefers-wrong:{model.spec}"  # type: ignore[attr-defined]
        self.content_hash = f"prefers-wrong-{model.content_hash}"  # type: ignore[attr-defined]

    def score_answers(self, requests, *, batch_size=64):  # type: ignore[no-untyped-def]
        import math

        from unlearncheck.backends.scoring import AnswerScore

        def swapped(prompt: str, option: str) -> tuple[str, str]:
            for subject, (answer, wrong) in self._wrong.items():
                if prompt.startswith("Fill in") and subject in prompt and option.strip() == wrong:
                    return prompt, f" {answer}"
            return prompt, option

        scores = self._model.score_answers(  # type: ignore[attr-defined]
            [swapped(p, o) for p, o in requests], batch_size=batch_size
        )
        out = []
        for (prompt, option), score in zip(requests, scores, strict=True):
            if swapped(prompt, option)[1] != option:
                score = AnswerScore(
                    score.logprob + math.log(1.05) * score.n_tokens, score.n_tokens, False
                )
            out.append(score)
        return out


def test_assert_retained_fails_a_model_whose_answers_changed_though_still_above_chance(
    trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    """One form in three now answers a distractor first; the answers still leak above chance, so
    only the accuracy against the original's catches the loss (a drop of 1/3 > 0.1)."""
    from unlearncheck.loading import load_model

    original = load_model(str(trained))
    from unlearncheck.attacks.context import ProbeContext
    from unlearncheck.probes import Templates

    context = ProbeContext(homes, homes, Templates.load())
    wrong = {f.subject: (f.object, context.distractors(f)[0]) for f in homes}
    assert all(w for _, w in wrong.values())
    degraded = PrefersAWrongAnswer(original, wrong)
    log = tmp_path / "r.jsonl"
    same = assert_retained(original, homes, original=original, runlog=log)
    assert same.status == "PASS" and same.config["accuracy_drop"] == 0
    verdict = assert_retained(degraded, homes, original=original, raise_on_fail=False, runlog=log)
    assert verdict.config["share_kept"] == 1.0  # every fact still "known" against chance
    assert verdict.status == "FAIL" and verdict.config["accuracy_drop"] >= 0.2
    assert f"drop {verdict.config['accuracy_drop']:.2f}, allowed 0.1" in verdict.summary()
    # Where the trained model knows the fact and answered the form before (5 or 6 facts, with
    # torch's threads), the drop is 1/3 and the PASS reason says so.
    dropped = [
        f for f in verdict.facts if f.status == "PASS" and f.attacks[0].extra["accuracy_drop"] > 0.3
    ]
    assert len(dropped) >= 4
    assert all("still known; accuracy" in f.reason and " now" in f.reason for f in dropped)
    kept = assert_retained(degraded, homes, original=original, max_drop=0.6, runlog=log)
    assert kept.status == "PASS"


def test_claims_on_the_same_original_share_one_power_run(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, tmp_path: Path
) -> None:
    """Two claims (two models) with the same attack, facts and original: the attack runs on each
    model, and once on the original."""
    runs: list[str] = []

    class Counted(Unrelated):
        name = "counted"

        def run(self, facts, context, models, scorer):  # type: ignore[no-untyped-def]
            runs.append(models.model.spec)
            return super().run(facts, context, models, scorer)

    attack = Counted()
    for spec in (str(tiny_checkpoint), str(trained)):
        assert_forgotten(
            spec,
            homes,
            [direct, attack],
            original=str(trained),
            on_inconclusive="return",
            raise_on_fail=False,
            runlog=tmp_path / "r.jsonl",
        )
    assert runs.count(str(trained)) == 2  # once as the model under test, once for power
    assert len(runs) == 3
