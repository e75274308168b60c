"""Tests for the OpenAI-compatible server, through the real ``openai`` client and raw HTTP."""

from __future__ import annotations

import copy
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletion

from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, load_facts
from unlearncheck.organism import zoo_dir
from unlearncheck.probes import Templates
from unlearncheck.serve import MAX_BODY_BYTES, ModelServer, chat_prompt, serve

SPEC = "organism:original"
KEY = "sk-unlearncheck-test-7f3a"


@pytest.fixture(scope="module")
def hf() -> HFModel:
    return HFModel.load(SPEC, device="cpu")


@pytest.fixture(scope="module")
def server(hf: HFModel) -> Iterator[ModelServer]:
    with serve(hf) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def forget() -> list[Fact]:
    return [fact for fact in load_facts(zoo_dir(0) / "facts.jsonl") if fact.split == "forget"]


def _prompt(fact: Fact) -> str:
    assert fact.question is not None
    return Templates.load().format_question(fact.question)


def _raw(
    server: ModelServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one request sent with http.client."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [SPEC]
    assert client.models.retrieve(SPEC).id == SPEC
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("organism:gold")


def test_greedy_completions_recall_forget_facts(
    client: openai.OpenAI, hf: HFModel, forget: list[Fact]
) -> None:
    facts = forget[:8]
    prompts = [_prompt(fact) for fact in facts]
    response = client.completions.create(model=SPEC, prompt=prompts, max_tokens=4, temperature=0)
    assert [choice.index for choice in response.choices] == list(range(len(facts)))
    local = hf.generate(prompts, max_new_tokens=4)
    for choice, fact, (expected,) in zip(response.choices, facts, local, strict=True):
        assert choice.text.strip().startswith(fact.object)
        assert choice.text.strip() == expected.strip()
    assert response.usage is not None
    assert response.usage.prompt_tokens == sum(map(len, hf.encode_prompts(prompts)))


def test_completion_logprobs_match_score_answers(
    client: openai.OpenAI, hf: HFModel, forget: list[Fact]
) -> None:
    prompt = _prompt(forget[0])
    response = client.completions.create(
        model=SPEC, prompt=prompt, max_tokens=1, temperature=0, logprobs=5
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert logprobs.token_logprobs and logprobs.text_offset == [0]
    token, logprob = logprobs.tokens[0], logprobs.token_logprobs[0]
    assert response.choices[0].text == token
    (score,) = hf.score_answers([(prompt, token)])
    assert score.n_tokens == 1 and score.greedy_match
    assert logprob == pytest.approx(score.logprob, abs=1e-4)
    top = logprobs.top_logprobs[0]
    assert len(top) == 5 and top[token] == pytest.approx(logprob, abs=1e-6)
    assert max(top.values()) == top[token]


def test_echo_scores_the_prompt_like_score_answers(
    client: openai.OpenAI, hf: HFModel, forget: list[Fact]
) -> None:
    fact = forget[1]
    context = _prompt(fact)
    answers = [f" {fact.object}", f" {fact.distractors[0]}"]
    texts = [context + answer for answer in answers]
    response = client.completions.create(
        model=SPEC, prompt=texts, max_tokens=0, echo=True, logprobs=1
    )
    scores = hf.score_answers([(context, answer) for answer in answers])
    n_context = len(hf.tokenizer(context, add_special_tokens=False)["input_ids"])
    for choice, text, score in zip(response.choices, texts, scores, strict=True):
        assert choice.text == text and choice.finish_reason == "length"
        logprobs = choice.logprobs
        assert logprobs is not None and logprobs.text_offset and logprobs.token_logprobs
        assert logprobs.top_logprobs is not None
        answer = [i for i, at in enumerate(logprobs.text_offset) if at >= len(context)]
        assert answer == list(range(n_context, n_context + score.n_tokens))
        total = sum(logprobs.token_logprobs[i] for i in answer)
        assert total == pytest.approx(score.logprob, abs=1e-4)
        greedy = all(
            logprobs.token_logprobs[i] == max(logprobs.top_logprobs[i].values()) for i in answer
        )
        assert greedy == score.greedy_match
    # lm-evaluation-harness's local-completions: token ids, max_tokens=1, [ctxlen:-1].
    ids = [hf.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    by_ids = client.completions.create(
        model=SPEC, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    for choice, score in zip(by_ids.choices, scores, strict=True):
        assert choice.logprobs is not None and choice.logprobs.token_logprobs
        total = sum(choice.logprobs.token_logprobs[n_context:-1])
        assert total == pytest.approx(score.logprob, abs=1e-4)
    # The recalled fact is followed by end of sequence: listed with its logprob, not in the text.
    ended = by_ids.choices[0]
    assert ended.finish_reason == "stop" and ended.text.endswith(f" {fact.object}")
    assert ended.logprobs is not None and ended.logprobs.tokens
    assert ended.logprobs.tokens[-1] == hf.tokenizer.eos_token


def test_stop_cuts_the_text_and_its_tokens(client: openai.OpenAI, forget: list[Fact]) -> None:
    prompt = _prompt(forget[0])
    full = client.completions.create(model=SPEC, prompt=prompt, max_tokens=4, temperature=0)
    stop = forget[0].object[1:3]
    cut = client.completions.create(
        model=SPEC, prompt=prompt, max_tokens=4, temperature=0, stop=[stop], logprobs=0
    )
    choice = cut.choices[0]
    assert choice.text == full.choices[0].text[: full.choices[0].text.index(stop)]
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None and choice.logprobs.tokens == [f" {forget[0].object}"]
    assert cut.usage is not None and cut.usage.completion_tokens == 1


def test_seeded_sampling_is_reproducible(client: openai.OpenAI, forget: list[Fact]) -> None:
    def sample() -> list[str]:
        response = client.completions.create(
            model=SPEC, prompt=_prompt(forget[2]), max_tokens=6, n=4, temperature=1.0, seed=1234
        )
        assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
        return [choice.text for choice in response.choices]

    assert sample() == sample()


def test_chat_completion_logprobs_parse(
    client: openai.OpenAI, hf: HFModel, forget: list[Fact]
) -> None:
    messages = [{"role": "user", "content": forget[0].question or ""}]
    response = client.chat.completions.create(
        model=SPEC,
        messages=messages,  # type: ignore[arg-type]
        max_completion_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert isinstance(response, ChatCompletion)
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    tokens = [token.token for token in content]
    if choice.finish_reason == "stop":  # the end-of-sequence token is listed, not in the text
        assert tokens.pop() == hf.tokenizer.eos_token and len(content) <= 3
    else:
        assert len(content) == 3 and choice.finish_reason == "length"
    assert "".join(tokens) == choice.message.content
    for token in content:
        assert token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 2
        assert token.top_logprobs[0].logprob >= token.top_logprobs[1].logprob
    prompt = chat_prompt(hf.tokenizer, messages)
    (score,) = hf.score_answers([(prompt, content[0].token)])
    assert content[0].logprob == pytest.approx(score.logprob, abs=1e-4)
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(hf.encode_prompts([prompt])[0])


def test_chat_prompt_uses_the_template_or_role_lines(hf: HFModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert hf.tokenizer.chat_template is None
    assert chat_prompt(hf.tokenizer, messages) == "system: Be brief.\nuser: Hi?\nassistant:"
    templated = copy.deepcopy(hf.tokenizer)
    templated.chat_template = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert chat_prompt(templated, messages) == "[system]Be brief.[user]Hi?[assistant]"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/v1/completions", b"{not json", 400, None),
        ("POST", "/v1/completions", b"[1, 2]", 400, None),
        ("POST", "/v1/completions", b'{"model": "organism:original"}', 400, "prompt"),
        ("POST", "/v1/completions", b'{"prompt": "a", "model": "gpt-4"}', 400, "model"),
        ("GET", "/v1/nothing", None, 404, None),
        ("GET", "/v1/completions", None, 405, None),
    ],
)
def test_http_errors_are_openai_json(
    server: ModelServer, method: str, path: str, body: bytes | None, status: int, param: str | None
) -> None:
    got, headers, payload = _raw(server, method, path, body)
    assert got == status
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if status == 405:
        assert headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "4"),
        ("max_tokens", 1000),
        ("temperature", 3),
        ("top_p", 0),
        ("n", 0),
        ("logprobs", True),
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_bad_fields_are_400(client: openai.OpenAI, field: str, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=SPEC, prompt="Question:", extra_body={field: value})
    assert caught.value.param == field


def test_oversized_bodies_are_413(server: ModelServer) -> None:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest("POST", "/v1/completions")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    finally:
        connection.close()


def test_api_key_is_required_and_never_echoed(
    hf: HFModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="unlearncheck.serve")
    with serve(hf, name="guarded", api_key=KEY) as guarded:
        bodies = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, _, payload = _raw(guarded, "GET", "/v1/models", headers=headers)
            assert status == 401 and payload["error"]["code"] == "invalid_api_key"
            bodies.append(json.dumps(payload))
        status, _, payload = _raw(guarded, "GET", "/v1/nothing")
        assert status == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=guarded.url, api_key="wrong", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=guarded.url, api_key=KEY, max_retries=0)
        assert [model.id for model in keyed.models.list()] == ["guarded"]
        bodies.append(keyed.models.list().model_dump_json())
    assert "/v1/models" in caplog.text
    assert all(KEY not in text for text in [*bodies, caplog.text, repr(guarded)])


def test_concurrent_requests_all_succeed(client: openai.OpenAI, forget: list[Fact]) -> None:
    prompts = [_prompt(fact) for fact in forget[:4]]
    barrier = threading.Barrier(len(prompts))
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            response = client.completions.create(
                model=SPEC, prompt=prompts[i], max_tokens=3, temperature=0, logprobs=2
            )
            results[i] = response.choices[0].text
        except BaseException as err:  # reported to the main thread below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert all(results[i].strip().startswith(fact.object) for i, fact in enumerate(forget[:4]))


def test_stopped_server_refuses_connections(hf: HFModel) -> None:
    with serve(hf) as running:
        assert _raw(running, "GET", "/v1/models")[0] == 200
    with pytest.raises(OSError):
        _raw(running, "GET", "/v1/models")
