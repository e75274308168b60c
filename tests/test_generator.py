"""The generator: multi-hop chains elicited from the original organism through the real
``unlearncheck serve`` and the real ``openai`` client, judged on ``multihop_shallow`` and ``gold``;
the reply cache; the facts export; the generator LLM's paraphrases and aliases against a scripted
chat server (a test double for the LLM's text only); and faults, retried, then "not run"."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from unlearncheck import assert_forgotten, load_facts
from unlearncheck.attacks import paraphrase
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.cli import main
from unlearncheck.facts import FactSet
from unlearncheck.generator import (
    Generated,
    GeneratorCache,
    GeneratorConfig,
    ProbeGenerator,
    generate_facts,
)
from unlearncheck.generator.cache import CACHE_FILE
from unlearncheck.generator.elicit import Elicitor, wordings_of
from unlearncheck.generator.llm import parse_text_list
from unlearncheck.probes import Templates
from unlearncheck.serve import ModelServer, serve

pytest_plugins = ["pytester"]

KEY = "sk-generator-test-SECRET-42"
#: Forget facts (birth cities) whose subjects are elicited: few, so the file stays fast.
SUBJECTS = 8
#: Retries and backoff of the faulty endpoints: short, so that the tests are.
RETRIES = 2
BACKOFF = 0.01
#: Seconds a generator request may take against the server that never answers.
SLOW_TIMEOUT = 0.5


class ServedRequests(logging.Handler):
    """Counts the completions requests in the server's own request log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "POST /v1/completions" in record.getMessage():
            self.count += 1


@dataclass
class Served:
    """The original organism behind the real server, and its request count."""

    server: ModelServer
    requests: ServedRequests

    def model(self) -> OpenAIModel:
        """A fresh client of the served original (the key from the environment)."""
        return OpenAIModel("original", self.server.url)


@pytest.fixture(scope="module")
def served(zoo: Path) -> Iterator[Served]:
    """``original`` of the zoo served on a free loopback port with a key; torch on one thread (two
    threads of one operation wait on each other on a machine whose cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    log = logging.getLogger("unlearncheck.serve")
    counter, level = ServedRequests(), log.level
    log.addHandler(counter)
    log.setLevel(logging.INFO)
    try:
        with serve(str(zoo / "original"), name="original", api_key=KEY) as server:
            yield Served(server, counter)
    finally:
        log.removeHandler(counter)
        log.setLevel(level)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def known(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl")


@pytest.fixture(scope="module")
def birth_cities(known: FactSet) -> FactSet:
    return known.split("forget").filter(lambda f: f.relation == "birth_city")[:SUBJECTS]


@dataclass(frozen=True)
class Elicited:
    """The first generation from the served original: what it made and what it cost."""

    generated: Generated
    cache: Path
    requests: int


@pytest.fixture(scope="module")
def elicited(
    served: Served, known: FactSet, birth_cities: FactSet, tmp_path_factory: pytest.TempPathFactory
) -> Elicited:
    cache = tmp_path_factory.mktemp("generator") / CACHE_FILE
    before = served.requests.count
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        generator = ProbeGenerator(GeneratorConfig(), GeneratorCache(cache))
        subjects = [f.subject for f in birth_cities]
        generated = generate_facts(generator, served.model(), subjects, known)
    return Elicited(generated, cache, served.requests.count - before)


def test_chains_are_elicited_from_the_served_original_and_match_its_knowledge(
    served: Served, elicited: Elicited, known: FactSet, birth_cities: FactSet
) -> None:
    generated = elicited.generated
    chains = generated.chains
    assert elicited.requests > 0 and chains
    country = {f.subject: f.object for f in known if f.relation == "country"}
    city = {f.subject: f.object for f in birth_cities}
    for chain in chains:
        assert chain.relations == ("birth_city", "country")
        born = city[chain.subject]
        assert [t.object for t in chain.path] == [born, country[born]]
        assert chain.questions[0] == (
            "chain.question",
            f"In which country was {chain.subject} born?",
        )
        assert all(t.support >= 2 for t in chain.path)
    # A subject has a chain when the original names its birth city in 2 of 3 wordings.
    before = served.requests.count
    config = GeneratorConfig()
    asker = Elicitor(served.model(), config, GeneratorCache(elicited.cache))
    templates = Templates.load()
    wordings = wordings_of(templates, "birth_city")[: config.wordings]
    chained = {c.subject for c in chains}
    for fact in birth_cities:
        prompts = [templates.format_question(q.format(subject=fact.subject)) for q in wordings]
        ((_, agreeing),) = Counter(asker.answers(prompts)).most_common(1)
        assert (fact.subject in chained) == (agreeing >= config.agree)
    assert chained != {f.subject for f in birth_cities}  # the original is unsure of some
    assert served.requests.count == before  # those answers were cached
    # A chain's links are each answered consistently; the composed question is asked of the
    # original afterwards, and it answers most of them (7 of 7 on one machine's zoo, 5 of 7 on
    # another's: the zoo's weights depend on the CPU's kernels).
    assert len(generated.answered) == len(chains) and sum(generated.answered) >= len(chains) / 2


def test_multihop_shallow_fails_and_gold_passes_where_the_elicited_chains_have_power(
    served: Served, elicited: Elicited, known: FactSet, birth_cities: FactSet
) -> None:
    chained = {c.subject for c in elicited.generated.chains}
    claim = birth_cities.filter(lambda f: f.subject in chained)
    generator = ProbeGenerator(GeneratorConfig(), GeneratorCache(elicited.cache))
    attack = generator.elicited_multihop(served.model())
    kwargs: dict[str, Any] = {
        "attacks": [attack],
        "original": "organism:original",
        "context": known,
        "raise_on_fail": False,
    }
    shallow = assert_forgotten("organism:multihop_shallow", claim, **kwargs)
    assert shallow.status == "FAIL"
    for fact in shallow.facts:
        outcome = fact.outcome("elicited_multihop")
        assert fact.status == "FAIL" and outcome.outcome == "recovered"
        best = outcome.evidence[0].probe
        assert best.attack == "elicited_multihop" and "-birth_city->" in best.lineage[1]
    gold = assert_forgotten("organism:gold", claim, on_inconclusive="return", **kwargs)
    assert gold.status != "FAIL"
    assert all(f.outcome("elicited_multihop").outcome == "not recovered" for f in gold.facts)
    # A fact passes where the chains recover it from the original (5 of 7, measured 2026-12-07);
    # elsewhere the attack has no power and the fact is INCONCLUSIVE, never PASS.
    for fact in gold.facts:
        power = fact.outcome("elicited_multihop").power
        assert fact.status == ("PASS" if power else "INCONCLUSIVE")
    assert [f.status for f in gold.facts].count("PASS") >= len(gold.facts) // 2


def test_a_rerun_asks_the_server_nothing_and_keeps_no_key(
    served: Served, elicited: Elicited, known: FactSet, birth_cities: FactSet
) -> None:
    before = served.requests.count
    generator = ProbeGenerator(GeneratorConfig(), GeneratorCache(elicited.cache))
    again = generate_facts(generator, served.model(), [f.subject for f in birth_cities], known)
    assert served.requests.count == before
    assert list(again.facts) == list(elicited.generated.facts)
    assert KEY.encode() not in elicited.cache.read_bytes()


def test_the_export_loads_back_and_the_template_attacks_ask_it(
    served: Served,
    elicited: Elicited,
    known: FactSet,
    birth_cities: FactSet,
    zoo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "probes.jsonl"
    subjects = [arg for f in birth_cities for arg in ("--subject", f.subject)]
    before = served.requests.count
    status = main(
        ["generate", "--original", f"openai:original@{served.server.url}",
         "--facts", str(zoo / "facts.jsonl"), *subjects, "--cache", str(elicited.cache),
         "--out", str(out)]
    )  # fmt: skip
    assert status == 0 and served.requests.count == before
    chains = elicited.generated.chains
    answered = sum(elicited.generated.answered)
    assert f"{len(chains)} chains, {answered} answered" in capsys.readouterr().out
    loaded = load_facts(out)
    assert list(loaded) == list(elicited.generated.facts)
    chain_facts = loaded.filter(lambda f: f.relation == "birth_city>country")
    assert len(chain_facts) == len(chains)
    answers = [f.metadata["answered_by_original"] for f in chain_facts]
    assert answers == list(elicited.generated.answered)
    fact = chain_facts[0]
    assert len(fact.metadata["path"]) == 3
    ctx = ProbeContext(loaded, chain_facts, Templates.load())
    prompts = {p.prompt for p in paraphrase(fact, ctx)}
    assert Templates.load().format_question(fact.paraphrases[0]) in prompts
    assert KEY not in out.read_text()


# --- the generator LLM, against a scripted chat server ------------------------------------------

#: One scripted step: the request body → (status, response body, headers); None: never answer.
Step = Callable[[dict[str, Any], str], "tuple[int, bytes, dict[str, str]] | None"]


def chat_reply(content: str) -> Step:
    """A well-formed chat completion whose message is ``content``."""

    def step(body: dict[str, Any], authorization: str) -> tuple[int, bytes, dict[str, str]]:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}}
        completion = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{**choice, "finish_reason": "stop"}],
        }
        return 200, json.dumps(completion).encode(), {}

    return step


def texts(*items: str) -> Step:
    """A chat completion whose message is the JSON list ``items``."""
    return chat_reply(json.dumps(list(items)))


def http_error(status: int, headers: dict[str, str] | None = None) -> Step:
    """An OpenAI-style JSON error; the message echoes the credentials (a careless proxy)."""

    def step(body: dict[str, Any], authorization: str) -> tuple[int, bytes, dict[str, str]]:
        error = {"error": {"message": f"failed for a request with {authorization}"}}
        return status, json.dumps(error).encode(), headers or {}

    return step


def not_json(body: dict[str, Any], authorization: str) -> tuple[int, bytes, dict[str, str]]:
    return 200, b"<html>502 Bad Gateway</html>", {}


def hang(body: dict[str, Any], authorization: str) -> None:
    return None


def tell_me(body: dict[str, Any], authorization: str) -> tuple[int, bytes, dict[str, str]]:
    """Two rewordings of the question the request quotes: "Tell me: …" and "Say: …"."""
    question = body["messages"][-1]["content"].rsplit("Question: ", 1)[1]
    return texts(f"Tell me: {question}", f"Say: {question}")(body, authorization)


class ScriptedChatServer:
    """A test double for a generator LLM's text: an OpenAI-compatible chat endpoint on a free
    loopback port that understands nothing; request ``i`` gets ``script[i]``, later ones
    ``then``. Every request body and ``Authorization`` header is kept."""

    def __init__(self, script: Sequence[Step], then: Step) -> None:
        self.script, self.then = list(script), then
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
        self._httpd.scripted = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def next_step(self, body: dict[str, Any], authorization: str) -> Step:
        with self._lock:
            self.bodies.append(body)
            self.authorizations.append(authorization)
            return self.script.pop(0) if self.script else self.then

    def stop(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _ScriptedHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        scripted = cast(ScriptedChatServer, self.server.scripted)  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        authorization = self.headers.get("Authorization", "")
        answer = scripted.next_step(body, authorization)(body, authorization)
        if answer is None:
            scripted.closing.wait()
            return
        status, data, headers = answer
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the request bodies instead."""


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedChatServer]]:
    """Starts scripted chat servers; stops them after the test."""
    started: list[ScriptedChatServer] = []

    def start(script: Sequence[Step] = (), then: Step = tell_me) -> ScriptedChatServer:
        started.append(ScriptedChatServer(script, then))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def llm_generator(
    server: ScriptedChatServer, cache: Path | None = None, **settings: Any
) -> ProbeGenerator:
    """A generator whose LLM is ``server`` (short retries unless ``settings`` say otherwise)."""
    given = {"retries": RETRIES, "backoff": BACKOFF, **settings}
    config = GeneratorConfig(base_url=server.url, model="writer", **given)
    return ProbeGenerator(config, GeneratorCache(cache))


def test_paraphrases_are_parsed_and_those_that_leak_or_drop_the_subject_rejected(
    scripted: Callable[..., ScriptedChatServer], tmp_path: Path
) -> None:
    reply = (
        "Here you are:\n```json\n"
        + json.dumps(
            [
                "In which town was Bragi Trapak born?",
                "Bragi Trapak was born where?",
                "Was Bragi Trapak born in rastow?",
                "Where was he born?",
                "Where was Bragi Trapak born?",
            ]
        )
        + "\n```"
    )
    server = scripted([chat_reply(reply)])
    cache = tmp_path / CACHE_FILE
    generator = llm_generator(server, cache, n=5, seed=7)
    screened = generator.llm.paraphrases("Where was Bragi Trapak born?", "Bragi Trapak", "Rastow")
    assert screened.kept == ("In which town was Bragi Trapak born?", "Bragi Trapak was born where?")
    assert [why for _, why in screened.rejected] == [
        "leaks the answer",
        "drops the subject",
        "repeats the question or another paraphrase",
    ]
    (body,) = server.bodies
    assert (body["model"], body["seed"], body["temperature"]) == ("writer", 7, 0.0)
    request = body["messages"][-1]["content"]
    assert "Where was Bragi Trapak born?" in request and "Rastow" not in request
    assert server.authorizations == [f"Bearer {KEY}"]
    again = llm_generator(server, cache, n=5, seed=7)
    assert again.llm.paraphrases("Where was Bragi Trapak born?", "Bragi Trapak", "Rastow") == (
        screened
    )
    assert len(server.bodies) == 1  # the cache answered
    assert KEY.encode() not in cache.read_bytes()


def test_aliases_that_are_the_name_or_leak_the_answer_are_rejected(
    scripted: Callable[..., ScriptedChatServer],
) -> None:
    server = scripted([texts("Brag", "B. Trapak", "bragi trapak", "Bragi of Rastow", "")])
    screened = llm_generator(server).llm.aliases("Bragi Trapak", "Rastow")
    assert screened.kept == ("Brag", "B. Trapak")
    assert len(screened.rejected) == 3


@pytest.mark.parametrize(
    "reply", ["no list here", '["one", 2]', '{"paraphrases": "one"}', "[not json]"]
)
def test_a_reply_that_is_no_list_of_strings_is_malformed(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_text_list(reply)


def test_llm_paraphrases_are_asked_of_the_model_in_a_claim(
    scripted: Callable[..., ScriptedChatServer], known: FactSet, birth_cities: FactSet
) -> None:
    server = scripted()
    generator = llm_generator(server)
    verdict = assert_forgotten(
        "organism:original",
        birth_cities[:1],
        attacks=[generator.llm_paraphrase],
        context=known.split("forget")[:12],
        raise_on_fail=False,
    )
    assert verdict.status == "FAIL"
    best = verdict.facts[0].outcome("llm_paraphrase").evidence[0].probe
    assert best.prompt.startswith("Question: Tell me: ") or best.prompt.startswith("Question: Say:")
    assert best.lineage[-1] == f"generator:writer@{server.url}"


def test_faults_are_retried_with_backoff_until_a_usable_reply(
    scripted: Callable[..., ScriptedChatServer],
) -> None:
    faults = [http_error(429, {"Retry-After": "0"}), http_error(500), not_json, chat_reply("[")]
    server = scripted([*faults, texts("Where was Bragi Trapak born, then?")])
    generator = llm_generator(server, retries=len(faults))  # a try for every fault
    kept = generator.llm.paraphrases("Where was Bragi Trapak born?", "Bragi Trapak", "Rastow")
    assert kept.kept == ("Where was Bragi Trapak born, then?",) and len(server.bodies) == 5
    slow = scripted([hang], then=texts("Bragi Trapak: where was he born?"))
    assert llm_generator(slow, timeout=SLOW_TIMEOUT).llm.paraphrases(
        "Where was Bragi Trapak born?", "Bragi Trapak", "Rastow"
    ).kept == ("Bragi Trapak: where was he born?",)
    assert len(slow.bodies) == 2


@pytest.mark.parametrize(
    ("then", "reason"),
    [
        (http_error(500), "HTTP 500"),
        (http_error(429), "HTTP 429"),
        (not_json, "malformed response"),
        (chat_reply("I cannot help with that."), "no JSON list"),
        (hang, f"no answer within {SLOW_TIMEOUT:g} s"),
    ],
)
def test_lasting_faults_leave_the_llm_attacks_not_run(
    scripted: Callable[..., ScriptedChatServer],
    known: FactSet,
    birth_cities: FactSet,
    then: Step,
    reason: str,
) -> None:
    server = scripted(then=then)
    generator = llm_generator(server, timeout=SLOW_TIMEOUT)
    verdict = assert_forgotten(
        "organism:gold",
        birth_cities[:1],
        attacks=[generator.llm_paraphrase, generator.llm_alias],
        context=known.split("forget")[:12],
        on_inconclusive="return",
    )
    assert verdict.status == "INCONCLUSIVE" and len(server.bodies) == 2 * (RETRIES + 1)
    for name in ("llm_paraphrase", "llm_alias"):
        outcome = verdict.facts[0].outcome(name)
        assert outcome.outcome == "not run" and outcome.blocking
        assert f"after {RETRIES} retries" in outcome.reason and reason in outcome.reason
        assert KEY not in outcome.reason
    assert KEY not in json.dumps(verdict.to_dict()) + verdict.explain()


def test_an_unreachable_original_leaves_elicited_multihop_not_run(
    known: FactSet, birth_cities: FactSet
) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    unreachable = OpenAIModel(
        "original", f"http://127.0.0.1:{port}/v1", retries=RETRIES, backoff=BACKOFF
    )
    attack = ProbeGenerator(GeneratorConfig(), GeneratorCache(None)).elicited_multihop(unreachable)
    verdict = assert_forgotten(
        "organism:gold",
        birth_cities[:1],
        attacks=[attack],
        context=known.split("forget")[:12],
        on_inconclusive="return",
    )
    outcome = verdict.facts[0].outcome("elicited_multihop")
    assert verdict.status == "INCONCLUSIVE" and outcome.outcome == "not run"
    assert "cannot connect" in outcome.reason and f"after {RETRIES} retries" in outcome.reason


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"base_url": "http://127.0.0.1:1/v1"}, "both a base URL and a model name"),
        ({"base_url": "ftp://host", "model": "m"}, "must start with http"),
        ({"depth": 1}, "depth must be at least 2"),
        ({"agree": 4}, "agree must be between 1 and wordings"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**settings)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "Nobody Known"], "--subject 'Nobody Known': no fact about it"),
        (["--split", "nonesuch"], "--split 'nonesuch': no fact about it"),
        (["--depth", "1"], "depth must be at least 2"),
        (["--generator-url", "http://127.0.0.1:9/v1"], "both a base URL and a model name"),
    ],
)
def test_generate_refuses_bad_input_before_asking_anything(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probes.jsonl"
    status = main(["generate", "--original", "organism:original", *args, "--out", str(out)])
    assert status == 2 and message in capsys.readouterr().err and not out.exists()


def test_the_llm_attacks_need_a_generator_llm() -> None:
    generator = ProbeGenerator(GeneratorConfig(), GeneratorCache(None))
    for name in ("llm_paraphrase", "llm_alias"):
        with pytest.raises(ValueError, match="no generator LLM configured"):
            getattr(generator, name)


def test_the_plugin_gives_a_generator_from_its_options(
    pytester: pytest.Pytester, scripted: Callable[..., ScriptedChatServer]
) -> None:
    server = scripted([texts("Where, then, was Bragi Trapak born?")])
    pytester.makeini(f"[pytest]\nuc_generator_url = {server.url}\nuc_cache = off\n")
    pytester.makepyfile(
        "def test_generator(generator):\n"
        "    screened = generator.llm.paraphrases(\n"
        "        'Where was Bragi Trapak born?', 'Bragi Trapak', 'Rastow')\n"
        "    assert screened.kept == ('Where, then, was Bragi Trapak born?',)\n"
        "    assert generator.cache.path is None\n"
    )
    given = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--uc-generator-model=writer")
    given.assert_outcomes(passed=1)
    assert [b["model"] for b in server.bodies] == ["writer"]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--uc-generator-url/--uc-generator-model*both a base URL*"])


def test_psg_takes_the_llm_paraphrases_as_its_first_candidate_rewrites(
    scripted: Callable[..., ScriptedChatServer], birth_cities: FactSet, known: FactSet
) -> None:
    fact = birth_cities[0]
    wording = f"Which town is the birthplace of {fact.subject}?"
    server = scripted([texts(wording, f"Was {fact.subject} born in {fact.object}?")])
    attack = llm_generator(server).psg
    context = ProbeContext(known, FactSet([fact]), Templates.load())
    rewrites = attack.candidate_rewrites(fact, context)
    assert rewrites[0].form == "extra[0]" and wording in rewrites[0].prompt  # the leak is dropped
    assert all(r.form != "extra[1]" for r in rewrites)
    assert len(rewrites) == attack.k and attack.name == "psg"


def known_aliases(facts: FactSet) -> Step:
    """A generator LLM that names the aliases the facts file gives the subject it is asked
    about (the text a real LLM would write, from the project's own ground truth)."""
    aliases = {f.subject: f.aliases for f in facts if f.aliases}

    def step(body: dict[str, Any], authorization: str) -> tuple[int, bytes, dict[str, str]]:
        subject = body["messages"][-1]["content"].split('"')[1]
        return texts(*aliases.get(subject, ()))(body, authorization)

    return step


@pytest.mark.parametrize(
    ("attack", "script", "caught"),
    [
        pytest.param(
            "llm_paraphrase",
            "tell_me",
            "quant_fragile",
            marks=pytest.mark.xfail(
                strict=False,
                reason="gold is FAILED on some machines' zoo builds: the false-FAIL rate of "
                "small claims against chance exceeds alpha there (open calibration work)",
            ),
        ),
        ("llm_alias", "aliases", "quant_fragile"),
    ],
)
def test_the_llm_attacks_catch_their_variant_and_pass_gold(
    scripted: Callable[..., ScriptedChatServer],
    known: FactSet,
    zoo: Path,
    attack: str,
    script: str,
    caught: str,
) -> None:
    """Through scripted wordings, as the template attacks do in the validity matrix, both catch
    quant_fragile, whose forgetting is a thin shift that other wordings undo. (qa_form_only is
    not caught: llm_paraphrase asks in the QA form, the one form it was unlearned on.)"""
    forget = known.split("forget").filter(lambda f: bool(f.aliases))[:24]
    server = scripted(then=tell_me if script == "tell_me" else known_aliases(known))
    generated = getattr(llm_generator(server), attack)
    statuses = {
        variant: assert_forgotten(
            str(zoo / variant),
            forget,
            attacks=[generated],
            original=str(zoo / "original"),
            raise_on_fail=False,
            on_inconclusive="return",
        ).status
        for variant in (caught, "gold")
    }
    assert statuses == {caught: "FAIL", "gold": "PASS"}
