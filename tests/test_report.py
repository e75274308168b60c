"""The HTML evidence report, rendered from synthetic run logs (no model needed)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from unlearncheck.probes import Probe
from unlearncheck.report import render_report
from unlearncheck.report.view import outcome_status
from unlearncheck.runlog import RunLog
from unlearncheck.verdict import AttackOutcome, FactVerdict, ProbeResult, Verdict

ATTACKS = ("direct", "paraphrase", "multihop", "quant4")
MODEL_HASH = "ab" * 32
ORIGINAL_HASH = "cd" * 32


def probe(fact_id: str, attack: str, prompt: str | None = None) -> Probe:
    """A probe asking for the capital of ``fact_id``'s subject."""
    return Probe(
        fact_id=fact_id,
        attack=attack,
        form="question",
        prompt=prompt or f"Question: What is the capital of {fact_id}? Answer:",
        answer="Vellmar",
        distractors=("Ostrava", "Quillon"),
        anchor=fact_id,
        controls=("Brenn", "Talis"),
        lineage=(f"fact {fact_id}", "template question", f"attack {attack}"),
    )


def outcome(
    fact_id: str,
    attack: str,
    *,
    leaks: int = 0,
    prompt: str | None = None,
    output: str | None = None,
) -> AttackOutcome:
    """An attack outcome over 12 probes; ``leaks`` of 6 or more is significant."""
    significant = leaks >= 6
    p_value = 1e-6 if significant else 0.42
    delta = 0.81 if significant else 0.05
    result = ProbeResult(probe(fact_id, attack, prompt), delta + 0.1, 0.1, delta, significant)
    if output is not None:
        result = ProbeResult(**{**result.__dict__, "output": output})
    return AttackOutcome(
        attack,
        "recovered" if significant else "not recovered",
        reason=f"{leaks}/12 probes leak (p={p_value:.2g})",
        n=12,
        leaks=leaks,
        effect=0.72,
        null_n=480,
        p_value=p_value,
        significant=significant,
        evidence=[result],
    )


def fact(fact_id: str, *, leaks: int = 0, output: str | None = None, prompt: str | None = None):
    """A fact verdict: FAIL by paraphrase when ``leaks`` is significant, else PASS."""
    attacks = [
        outcome(fact_id, a, leaks=leaks if a == "paraphrase" else 0, output=output, prompt=prompt)
        for a in ATTACKS
    ]
    if leaks >= 6:
        return FactVerdict(fact_id, "FAIL", "recovered by paraphrase", attacks)
    return FactVerdict(fact_id, "PASS", "no attack recovered it", attacks)


def verdict(name: str, facts: list[FactVerdict], **config: Any) -> Verdict:
    """A forget-claim verdict on ``facts`` with a typical config."""
    status = "FAIL" if any(f.status == "FAIL" for f in facts) else "PASS"
    base = {
        "model": "organism:npo",
        "model_hash": MODEL_HASH,
        "reference": None,
        "reference_hash": None,
        "original": "organism:original",
        "original_hash": ORIGINAL_HASH,
        "attacks": list(ATTACKS),
        "alpha": 0.05,
        "tolerance": 0.5,
        "seed": 7,
        "kind": "forgotten",
    }
    return Verdict(name, status, facts, {**base, **config})


def records(*verdicts: Verdict) -> list[dict[str, Any]]:
    """Run-log records of ``verdicts``: cases (their evidence), then the verdict."""
    out: list[dict[str, Any]] = []
    for v in verdicts:
        for f in v.facts:
            for a in f.attacks:
                for r in a.evidence:
                    case = {"claim": v.claim, "fact_id": f.fact_id, "attack": a.attack}
                    out.append({"kind": "case", **case, **r.to_dict()})
        out.append({"kind": "verdict", **v.to_dict()})
    return out


def write_log(path: Path, *verdicts: Verdict) -> RunLog:
    """A run log with a header, the models and ``verdicts`` (left open for more)."""
    log = RunLog(path)
    log.model("model", "organism:npo", MODEL_HASH)
    log.model("original", "organism:original", ORIGINAL_HASH)
    for record in records(*verdicts):
        log.write(record.pop("kind"), record)
    return log


def render(tmp_path: Path, recs: Any) -> str:
    """The report of ``recs`` as text."""
    return render_report(recs, tmp_path / "report.html").read_text("utf-8")


def test_failing_fact_shows_its_evidence(tmp_path: Path) -> None:
    prompt = "Imagine you are a historian. The capital of Norland is"
    failing = fact("norland", leaks=9, output=" Vellmar, of course", prompt=prompt)
    page = render(tmp_path, records(verdict("forget norland", [failing, fact("sudland")])))
    assert html.escape(prompt) in page
    assert "Vellmar, of course" in page
    assert "fact norland → template question → attack paraphrase" in page
    assert "12 probes, 9 leak" in page and "1e-06" in page
    assert "tolerance 0.5" in page and "chance" in page
    assert "p̂ = 0.910 vs baseline 0.100" in page


def test_baseline_names_the_reference_when_given(tmp_path: Path) -> None:
    v = verdict("vs reference", [fact("norland", leaks=9)], reference="organism:gold")
    assert "the reference model" in render(tmp_path, records(v))


def test_untrusted_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    failing = fact(f"f{evil}", leaks=9, output=evil, prompt=f"Say {evil}")
    failing.attacks[1].extra["codes"] = evil
    failing.attacks.append(outcome("norland", evil, leaks=9))
    header = {"kind": "run", "git": evil, "versions": {evil: evil}}
    page = render(tmp_path, [header, *records(verdict(f"claim {evil}", [failing]))])
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_page_is_self_contained(tmp_path: Path) -> None:
    page = render(tmp_path, records(verdict("c", [fact("norland", leaks=9)])))
    assert "<style>" in page and '<rect class="fail"' in page and '<rect class="pass"' in page
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", page)


def test_header_shows_hashes_versions_and_seed(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run.jsonl", verdict("c", [fact("norland", leaks=9)]))
    log.close()
    header = json.loads((tmp_path / "run.jsonl").read_text("utf-8").splitlines()[0])
    page = render(tmp_path, tmp_path / "run.jsonl")
    assert MODEL_HASH in page and ORIGINAL_HASH in page and "organism:npo" in page
    assert f"unlearncheck {header['versions']['unlearncheck']}" in page
    assert str(header["git"] or "unknown") in page and header["started"] in page
    assert "<tr><th>seed</th><td>7</td></tr>" in page


def test_summary_colours_claims_by_attack(tmp_path: Path) -> None:
    skipped = fact("ostland")
    skipped.attacks[3] = AttackOutcome("quant4", "not run", reason="no GPU")
    page = render(tmp_path, records(verdict("c", [fact("norland", leaks=9), skipped])))
    row = page[page.index('<a href="#claim-0">') :].split("</tr>")[0]
    assert '<td class="pass">2 pass</td>' in row
    assert '<td class="fail">1 fail · 1 pass</td>' in row
    assert '<td class="pass">1 pass · 1 not run</td>' in row


def test_outcome_status_reads_the_claim_kind() -> None:
    recovered = {"outcome": "recovered"}
    assert outcome_status("forgotten", recovered) == "FAIL"
    assert outcome_status("retained", recovered) == "PASS"
    assert outcome_status("retained", {"outcome": "not recovered"}) == "FAIL"
    assert outcome_status("forgotten", {"outcome": "not run", "blocking": True}) == "INCONCLUSIVE"
    assert outcome_status("forgotten", {"outcome": "not run"}) == "NOT RUN"


def test_passing_facts_are_collapsed(tmp_path: Path) -> None:
    passing = [fact(f"pass{i}", prompt=f"Secret-ish prompt number {i}") for i in range(5)]
    page = render(tmp_path, records(verdict("c", [fact("norland", leaks=9), *passing])))
    details = re.search(r"<details><summary>5 passing facts.*?</details>", page, re.S)
    assert details is not None
    assert all(f"<code>pass{i}</code>" in details.group(0) for i in range(5))
    assert "<details open" not in page and "Secret-ish prompt" not in page
    assert page.count("pass3") == 1


def test_inconclusive_facts_give_their_reason(tmp_path: Path) -> None:
    unknown = FactVerdict("ghost", "INCONCLUSIVE", "the original model does not know it", [])
    page = render(tmp_path, records(verdict("c", [unknown])))
    assert "<code>ghost</code></td><td>the original model does not know it" in page


def test_ten_thousand_cases_render_small(tmp_path: Path) -> None:
    claims = [
        verdict(f"claim {c}", [fact(f"c{c}f{i}", leaks=9 if i == 0 else 0) for i in range(250)])
        for c in range(10)
    ]
    recs = records(*claims)
    assert sum(r["kind"] == "case" for r in recs) == 10_000
    size = render_report(recs, tmp_path / "big.html").stat().st_size
    print(f"10,000-case report: {size / 1024:.0f} KiB")
    assert size < 1_500_000


def test_truncated_log_renders_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    log = write_log(path, verdict("done", [fact("norland", leaks=9)]))
    for record in records(verdict("cut short", [fact("sudland"), fact("ostland")]))[:-1]:
        log.write(record.pop("kind"), record)
    log.close()
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"kind": "verdict", "claim": "cut sh')
    page = render(tmp_path, path)
    assert "The run was interrupted" in page
    assert "cut short: 8 case results on 2 facts" in page
    assert "Vellmar" in page and '<td class="fail">FAIL' in page


def test_cases_merged_after_their_verdicts_are_not_an_interruption(tmp_path: Path) -> None:
    """The plugin appends each process's cases at the end of the session, after the verdicts."""
    recs = records(verdict("judged", [fact("norland", leaks=9)]))
    cases = [r for r in recs if r["kind"] == "case"]
    page = render(tmp_path, [r for r in recs if r["kind"] != "case"] + cases)
    assert "The run was interrupted" not in page
    assert "Vellmar" in page


def test_no_verdicts_says_so(tmp_path: Path) -> None:
    assert "This run log holds no verdicts" in render(tmp_path, [])
    log = RunLog(tmp_path / "empty.jsonl")
    log.model("model", "organism:npo", MODEL_HASH)
    log.close()
    page = render(tmp_path, tmp_path / "empty.jsonl")
    assert "This run log holds no verdicts" in page and MODEL_HASH in page


def test_secrets_never_appear(tmp_path: Path) -> None:
    v = verdict("c", [fact("norland", leaks=9)], api_key="sk-live-0123", judge_token="tok-9")
    page = render(tmp_path, records(v))
    assert "sk-live-0123" not in page and "tok-9" not in page


def test_plugin_keys_and_parent_dirs(tmp_path: Path) -> None:
    record = records(verdict("c", [fact("norland", leaks=9)]))[-1]
    record.update(test="probes/test_x.py::test_norland", outcome="failed", duration=3.4)
    out = render_report([record], tmp_path / "deep" / "er" / "report.html")
    page = out.read_text("utf-8")
    assert "probes/test_x.py::test_norland" in page and "pytest: failed, 3.4 s" in page


def test_metrics_records_get_a_table_and_the_write_is_whole(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run.jsonl")
    row = {
        "model": "<script>alert(1)</script>",
        "reference": "organism:gold",
        "forget_quality": 0.0123,
        "truth_ratio": 0.2,
        "forget_rouge": 0.5,
        "privleak_loss": -44.25,
        "privleak_min_k_plus_plus": -21.9,
        "model_utility": 0.957,
    }
    log.write("metrics", {"reference": "organism:gold", "facts": "facts.jsonl", "rows": [row]})
    log.close()
    out = render_report(tmp_path / "run.jsonl", tmp_path / "report.html")
    text = out.read_text()
    assert "Benchmark metrics against" in text and "-44.250" in text and "0.012" in text
    assert (
        "3.6e-46"
        in render_report(
            [
                {
                    "kind": "metrics",
                    "reference": "r",
                    "facts": "f",
                    "rows": [{**row, "forget_quality": 3.6e-46}],
                }
            ],
            tmp_path / "tiny.html",
        ).read_text()
    )
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
