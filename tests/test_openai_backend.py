"""Black-box targets: claims against OpenAI-compatible endpoints, with the real openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from unlearncheck import assert_forgotten, load_facts
from unlearncheck.attacks import direct, quant4
from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.serve import serve
from unlearncheck.specs import ModelSpecError

KEY = "sk-test-never-in-any-artifact-1234"


@pytest.fixture(scope="module")
def urls(zoo: Path) -> Iterator[dict[str, str]]:
    """``original`` and ``gold`` of the zoo, each served on a free loopback port with a key."""
    with (
        serve(str(zoo / "original"), name="original", api_key=KEY) as original,
        serve(str(zoo / "gold"), name="gold", api_key=KEY) as gold,
    ):
        yield {"original": original.url, "gold": gold.url}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def forget(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl").split("forget")[:12]


def test_scores_and_greedy_outputs_match_the_local_model(
    zoo: Path, urls: dict[str, str], forget: FactSet
) -> None:
    remote = OpenAIModel("original", urls["original"])
    local = load_model(str(zoo / "original"))
    requests = [(f"Question: {f.question}\nAnswer:", f" {f.object}") for f in forget]
    for theirs, ours in zip(
        remote.score_answers(requests, batch_size=5), local.score_answers(requests), strict=True
    ):
        assert theirs.logprob == pytest.approx(ours.logprob, abs=1e-4)
        assert (theirs.n_tokens, theirs.greedy_match) == (ours.n_tokens, ours.greedy_match)
    prompts = [prompt for prompt, _ in requests]
    theirs = remote.generate(prompts, max_new_tokens=4)
    ours = local.generate(prompts, max_new_tokens=4)
    # The server keeps the continuation's leading space, as OpenAI's API does.
    assert [[t.strip() for t in out] for out in theirs] == ours


def test_claims_run_on_endpoints_and_weight_attacks_are_not_run(
    urls: dict[str, str], forget: FactSet, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    original = f"openai:original@{urls['original']}"
    failing = assert_forgotten(original, forget, attacks=[direct], raise_on_fail=False, runlog=log)
    assert failing.status == "FAIL"
    verdict = assert_forgotten(
        f"openai:gold@{urls['gold']}",
        forget,
        attacks=[direct, quant4],
        original=original,
        on_inconclusive="return",
        runlog=log,
    )
    # quant4 could not run on an endpoint: no fact may PASS on direct alone
    assert verdict.status == "INCONCLUSIVE"
    assert all("not run: quant4 (needs weights" in f.reason for f in verdict.facts)
    outcome = verdict.facts[0].outcome("quant4")
    assert outcome.outcome == "not run" and outcome.blocking and "needs weights" in outcome.reason
    text = log.read_text() + json.dumps(verdict.to_dict()) + verdict.explain()
    assert KEY not in text and "openai:gold@http://127.0.0.1:" in text


def test_a_bad_endpoint_spec_names_what_is_expected() -> None:
    with pytest.raises(ModelSpecError, match="openai:<model name>@<http"):
        load_model("openai:no-url-given")
