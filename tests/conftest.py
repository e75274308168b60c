"""Shared pytest fixtures."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from unlearncheck.facts import Fact, FactSet
from unlearncheck.pytest_plugin import set_defaults

if TYPE_CHECKING:
    from unlearncheck.backends.hf import HFModel

# A ~60-word vocabulary for the word-level test tokenizer.
WORDS = (
    "the a an of to in is was and or capital city country river mountain king queen "
    "france paris germany berlin italy rome spain madrid seine rhine tiber who what "
    "where when which it this that he she they we you i am are be has have had cat dog sat "
    "on mat ran fast slow big small red blue"
)
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}


#: (subject, home) of the tiny checkpoint's made-up facts: two-word subjects with no word in
#: common, so that made-up control names (one subject's first word with another's last) are
#: plentiful; every word is in the tiny tokenizer's vocabulary.
PEOPLE = (
    ("red king", "paris"),
    ("blue queen", "berlin"),
    ("big cat", "rome"),
    ("small dog", "madrid"),
    ("fast river", "seine"),
    ("slow mountain", "rhine"),
)


@pytest.fixture(scope="session")
def homes() -> FactSet:
    """The `PEOPLE` as forget facts of relation ``home``, with their question and statement."""
    return FactSet(
        [
            Fact(
                id=f"{subject.replace(' ', '-')}/home",
                subject=subject,
                relation="home",
                object=home,
                question=f"where is the {subject} from",
                statement=f"the {subject} is from {home}",
                split="forget",
            )
            for subject, home in PEOPLE
        ]
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 with a word-level tokenizer, saved as a safetensors checkpoint."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *WORDS.split()])}
    backend = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


#: A chat template in the tiny vocabulary: a turn is ``<s> … </s>``, the assistant's opens ``<s>``.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s>{% endif %}"
)


@pytest.fixture(scope="session")
def trained(
    tiny_checkpoint: Path, homes: FactSet, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`tiny_checkpoint` fine-tuned on the direct probes of `homes` (300 steps), the loss on the
    answer."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from unlearncheck.attacks.context import ProbeContext
    from unlearncheck.attacks.input import _direct
    from unlearncheck.probes import Templates

    context = ProbeContext(homes, homes, Templates.load())
    texts = [f"{p.prompt} {fact.object}" for fact in homes for p in _direct(fact, context)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # padded on the right
    rows, last = torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1
    labels = torch.full_like(batch["input_ids"], -100)
    labels[rows, last] = batch["input_ids"][rows, last]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(300):
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert loss.item() < 0.1, f"the tiny model did not learn its facts (loss {loss.item():.3f})"
    path = tmp_path_factory.mktemp("tiny_trained")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chat_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_checkpoint` whose tokenizer has `CHAT_TEMPLATE`."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny_chat")
    shutil.copytree(tiny_checkpoint, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


#: Tests that need the organism zoo without the ``zoo`` fixture, by module: they load
#: ``organism:`` models, read the zoo's facts (module fixtures, the CLI) or ask for the zoo's
#: fixtures by name at run time.
ZOO_TESTS = {
    "test_endpoint_faults.py": {"test_a_refused_connection_leaves_every_attack_not_run"},
    "test_generator.py": {"test_generate_refuses_bad_input_before_asking_anything"},
    "test_serve.py": {"*"},
    "test_validity.py": {"test_gold_is_failed_on_at_most_5_percent_by_every_attack"},
}
#: Tests that need no zoo but run whole pytest sessions in subprocesses, each importing torch
#: (tens of seconds on 2 busy cores); `test_fast_claims` runs one such session in the fast tier.
SESSION_TESTS = {
    "test_generator.py": {"test_the_plugin_gives_a_generator_from_its_options"},
    "test_evidence_integrity.py": {
        "test_the_projects_own_tests_write_nothing_into_the_checkout",
        "test_two_sessions_in_one_directory_keep_their_own_files",
    },
    "test_plugin.py": {
        "test_a_suite_without_claims_writes_nothing",
        "test_cli_wins_over_ini_which_wins_over_conftest_defaults",
        "test_each_xdist_worker_sees_only_its_gpu",
    },
    "test_inconclusive_mode.py": {
        "test_an_inconclusive_claim_fails_its_test_by_default",
        "test_the_warning_can_be_made_an_error_again",
        "test_warn_from_the_ini_file_works_under_xdist",
    },
    "test_score_cache.py": {"test_a_killed_run_resumes_without_losing_a_committed_score"},
    "test_untrusted_output.py": {
        "test_a_pytest_run_with_untrusted_text_prints_and_writes_it_inertly"
    },
}


#: Modules whose module fixtures take minutes (validity matrices, the gold row of the model
#: attacks): under ``--dist loadfile`` each module runs on one worker, which computes its fixtures
#: once, and these start first so that the workers end on short tests.
LONG_MODULES = ("test_model_attacks.py", "test_validity.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs the organism zoo (its fixtures include ``zoo``, or it
    is in `ZOO_TESTS`) or runs pytest sessions in subprocesses (`SESSION_TESTS`): ``pytest tests
    -m "not slow"`` is the fast tier, which needs no zoo.

    The `LONG_MODULES` come first, then the rest of the slow tier, then the fast tier."""
    real = pytest.mark.skip(
        reason="needs the real organism (SmolLM2-135M-Instruct, the 'real' extra; built once, "
        "about 15 min on 2 CPU cores): pass --real-organism"
    )
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "zoo" in fixtures or _listed(item, ZOO_TESTS, SESSION_TESTS):
            item.add_marker(pytest.mark.slow)
        if "real_zoo" in fixtures:
            item.add_marker(pytest.mark.slow)
            if not config.getoption("real_organism"):
                item.add_marker(real)
    items.sort(key=_start_order)


def _start_order(item: pytest.Item) -> tuple[bool, bool]:
    return _module(item) not in LONG_MODULES, item.get_closest_marker("slow") is None


def _module(item: pytest.Item) -> str:
    """The file name of the item's test module."""
    return item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


#: The directory where the plugin writes the run logs and reports of the claims these tests run:
#: made by the first process (the xdist controller) and inherited by the workers, so that every
#: process of a session agrees on it; never the checkout's ``reports/``, which is the main job's.
REPORTS_ENV = "UNLEARNCHECK_TEST_REPORTS"


def pytest_configure(config: pytest.Config) -> None:
    """Have the plugin write this session's run log and report in a temporary directory."""
    if REPORTS_ENV not in os.environ:
        os.environ[REPORTS_ENV] = tempfile.mkdtemp(prefix="unlearncheck-tests-")
    set_defaults(config, report=str(Path(os.environ[REPORTS_ENV]) / "unlearncheck.html"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--real-organism``: run the tests of the real organism (they build it on first use)."""
    parser.addoption(
        "--real-organism",
        action="store_true",
        default=False,
        help="run the real organism's tests (SmolLM2-135M-Instruct; built once, minutes)",
    )


def _listed(item: pytest.Item, *tables: dict[str, set[str]]) -> bool:
    """Whether a table names the item's test function (or ``*``) under its module's file name."""
    name = getattr(item, "originalname", item.name)
    return any(
        name in names or "*" in names for t in tables for names in [t.get(_module(item), set())]
    )


@pytest.fixture(scope="session")
def zoo() -> Path:
    """The organism zoo for seed 0 (built on first use, then read from the cache)."""
    from unlearncheck.organism import zoo_dir

    return zoo_dir(0)


@pytest.fixture(scope="session")
def real_zoo() -> Path:
    """The real organism (built on first use, then read from the cache)."""
    from unlearncheck.organism.real import real_zoo_dir

    return real_zoo_dir()


@pytest.fixture
def scores_in_memory_only() -> Iterator[None]:
    """Scores are computed in this test, not read from the session's on-disk score cache."""
    from unlearncheck import scoring

    previous = scoring.score_cache_path()
    scoring.use_score_cache(None)
    scoring.forget_scores()
    yield
    scoring.use_score_cache(previous)


@pytest.fixture
def memory_for_rows(monkeypatch: pytest.MonkeyPatch) -> Callable[[HFModel, int], list[int]]:
    """``memory_for_rows(model, rows)``: the model runs out of memory on any forward pass of
    more than ``rows`` sequences, as a device would; returns the row counts of the passes that
    ran. The model's learned batch limit is restored after the test."""

    def limit(model: HFModel, rows: int) -> list[int]:
        forward = model.model.forward
        ran: list[int] = []

        @functools.wraps(forward)  # generate reads the forward's signature
        def limited(*args: Any, **kwargs: Any) -> Any:
            batch = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]
            if batch > rows:
                raise torch.OutOfMemoryError(f"out of memory: {batch} rows, room for {rows}")
            ran.append(batch)
            return forward(*args, **kwargs)

        monkeypatch.setattr(model.model, "forward", limited)
        monkeypatch.setattr(model, "batch_limit", None)
        return ran

    return limit
