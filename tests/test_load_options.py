"""How checkpoints load: ``--uc-dtype``, ``--uc-prompt-format`` and ``--uc-threads`` (and the
library's ``load_model(spec, dtype=..., prompt_format=...)``, the CLI's ``--dtype`` and
``--prompt-format``), the physical-core count behind the default threads, sharded safetensors
checkpoints, and ``--uc-device auto`` without accelerate.

The options are parsed in this process (``pytester.parseconfig``) without running a session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.utils import logging as hf_logging

from unlearncheck import cli
from unlearncheck.backends.hf import PROMPT_FORMATS, HFModel
from unlearncheck.backends.hf_loading import DTYPES
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.pytest_plugin import fixtures, get_options
from unlearncheck.pytest_plugin import options as plugin_options
from unlearncheck.pytest_plugin.fixtures import default_threads, physical_cores
from unlearncheck.specs import (
    ModelSpecError,
    check_checkpoint,
    check_prompt_format,
    check_spec,
    has_chat_template,
    resolve_device,
)

pytest_plugins = ["pytester"]

REQUESTS = [("the red king is from", " paris"), ("the cat", " sat on the mat")]
TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}assistant :"


def _config(pytester: pytest.Pytester, *args: str) -> pytest.Config:
    return pytester.parseconfig("--uc-cache=off", *args, pytester.path)


@pytest.fixture
def threads() -> Any:
    """Torch's thread count is restored after the test (the plugin's loading sets it)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- the options ---------------------------------------------------------------------------------


def test_the_options_default_to_auto_and_parse_from_the_command_line_and_ini(
    pytester: pytest.Pytester,
) -> None:
    options = get_options(_config(pytester))
    assert (options.dtype, options.prompt_format, options.threads) == ("auto", "auto", None)
    options = get_options(
        _config(pytester, "--uc-dtype=BFloat16", "--uc-prompt-format", "plain", "--uc-threads=3")
    )
    assert (options.dtype, options.prompt_format, options.threads) == ("bfloat16", "plain", 3)
    pytester.makeini("[pytest]\nuc_dtype = float16\nuc_prompt_format = chat\nuc_threads = 2\n")
    options = get_options(_config(pytester, "--uc-dtype=float32"))  # the command line wins
    assert (options.dtype, options.prompt_format, options.threads) == ("float32", "chat", 2)


@pytest.mark.parametrize(
    ("ini", "args", "message"),
    [
        (
            "",
            ["--uc-dtype=int3"],
            "--uc-dtype: expected auto, float32, bfloat16 or float16, got 'int3'",
        ),
        (
            "uc_prompt_format = chatty",
            [],
            "ini key uc_prompt_format: expected auto, chat or plain, got 'chatty'",
        ),
        ("", ["--uc-threads=0"], "--uc-threads: must be at least 1, got 0"),
        ("uc_threads = -2", [], "ini key uc_threads: must be at least 1, got -2"),
        ("", ["--uc-threads=many"], "--uc-threads: not an integer: 'many'"),
    ],
    ids=["dtype", "prompt-format-ini", "threads-zero", "threads-ini", "threads-word"],
)
def test_a_bad_value_is_a_usage_error_naming_the_option(
    pytester: pytest.Pytester, ini: str, args: list[str], message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    with pytest.raises(pytest.UsageError) as error:
        get_options(_config(pytester, *args))
    assert str(error.value) == message


def test_the_plugin_cli_and_library_offer_the_same_choices() -> None:
    assert plugin_options._CHOICES["dtype"] == DTYPES == cli._DTYPES
    assert plugin_options._CHOICES["prompt-format"] == PROMPT_FORMATS == cli._PROMPT_FORMATS


def test_the_options_reach_load_model_and_torch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        "unlearncheck.loading.load_model", lambda spec, **kwargs: calls.append((spec, kwargs))
    )
    set_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    config = _config(pytester, "--uc-dtype=bfloat16", "--uc-prompt-format=plain", "--uc-threads=3")
    fixtures._load(config, "some/model")
    assert calls == [
        (
            "some/model",
            {
                "device": None,
                "dtype": "bfloat16",
                "prompt_format": "plain",
                "allow_pickle": False,
                "trust_remote_code": False,
            },
        )
    ]
    assert set_threads == [3]  # --uc-threads, whether or not under xdist

    # Without --uc-threads: this worker's share of the cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    config = _config(pytester)
    monkeypatch.setattr(config, "workerinput", {"workercount": 3}, raising=False)
    fixtures._load(config, "some/model")
    assert set_threads == [3, 2]
    assert calls[-1][1]["dtype"] == "auto" and calls[-1][1]["prompt_format"] == "auto"


def test_bfloat16_through_the_plugin_gives_bf16_weights_on_the_cpu(
    pytester: pytest.Pytester, tiny_checkpoint: Path, threads: None
) -> None:
    config = _config(pytester, "--uc-device=cpu", "--uc-dtype=bfloat16", "--uc-threads=1")
    model = fixtures._load(config, str(tiny_checkpoint))
    assert isinstance(model, HFModel)
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    assert torch.get_num_threads() == 1
    full = load_model(str(tiny_checkpoint), device="cpu", dtype="auto")  # float32 on the CPU
    assert isinstance(full, HFModel) and full.model.dtype == torch.float32
    assert [s.logprob for s in model.score_answers(REQUESTS)] == pytest.approx(
        [s.logprob for s in full.score_answers(REQUESTS)], abs=0.05
    )
    # Each dtype is its own model in the cache; the same options give the same model.
    assert load_model(str(tiny_checkpoint), device="cpu", dtype="bfloat16") is model
    assert load_model(str(tiny_checkpoint), device="cpu") is full


def test_load_model_refuses_unknown_values(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int3'; expected one of auto, float32"):
        load_model(str(tiny_checkpoint), dtype="int3")
    with pytest.raises(ValueError, match="prompt format 'chatty' is not one of auto, chat"):
        load_model(str(tiny_checkpoint), prompt_format="chatty")  # type: ignore[arg-type]


# --- prompt formats ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a chat template."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "tiny_chat"
    shutil.copytree(tiny_checkpoint, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def test_chat_on_a_tokenizer_without_a_chat_template_is_a_clear_error(
    pytester: pytest.Pytester, tiny_checkpoint: Path
) -> None:
    assert not has_chat_template(tiny_checkpoint)
    with pytest.raises(ModelSpecError, match=r"prompt format 'chat'.*this tokenizer has none"):
        check_prompt_format(str(tiny_checkpoint), "chat")
    check_prompt_format(str(tiny_checkpoint), "auto")
    check_prompt_format(str(tiny_checkpoint), "plain")
    with pytest.raises(
        ValueError, match=r"prompt format 'chat': the tokenizer of .* no chat templ"
    ):
        load_model(str(tiny_checkpoint), device="cpu", prompt_format="chat")
    # The plugin refuses it at session start, naming the option and the model.
    config = _config(pytester, f"--uc-model={tiny_checkpoint}", "--uc-prompt-format=chat")
    with pytest.raises(pytest.UsageError, match=r"^--uc-prompt-format \(--uc-model\): .*none"):
        plugin_options.check_inputs(config, get_options(config))


def test_a_chat_template_is_found_and_auto_uses_it(chat_checkpoint: Path) -> None:
    assert has_chat_template(chat_checkpoint)
    check_prompt_format(str(chat_checkpoint), "chat")
    auto = load_model(str(chat_checkpoint), device="cpu")
    plain = load_model(str(chat_checkpoint), device="cpu", prompt_format="plain")
    assert (auto.prompt_format, plain.prompt_format) == ("chat", "plain")
    assert auto.render_prompt("where is rome") == "user : where is rome assistant :"


def test_the_cli_refuses_chat_without_a_template_before_loading(
    tiny_checkpoint: Path, homes: FactSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = tmp_path / "facts.jsonl"
    homes.to_jsonl(facts)
    spec = str(tiny_checkpoint)
    args = ["metrics", f"--model={spec}", f"--reference={spec}", f"--facts={facts}"]
    assert cli.main([*args, "--prompt-format=chat", "--dtype=bfloat16"]) == 2
    assert "unlearncheck metrics: " in capsys.readouterr().err
    parsed = cli.build_parser().parse_args([*args, "--dtype=float16", "--prompt-format=plain"])
    assert (parsed.dtype, parsed.prompt_format) == ("float16", "plain")
    assert cli.build_parser().parse_args(args).dtype == "auto"


# --- threads -------------------------------------------------------------------------------------

#: /proc/cpuinfo of two sockets of two cores with two hyper-threads each (processors 0-7; the
#: siblings of a core are n and n + 4), trimmed to the fields read.
CPUINFO = "\n\n".join(
    f"processor\t: {n}\nphysical id\t: {n // 2 % 2}\ncore id\t\t: {n % 2}\nflags\t\t: fpu"
    for n in range(8)
)


def test_physical_cores_count_each_core_once_within_the_affinity_mask() -> None:
    assert physical_cores(CPUINFO, allowed=set(range(8))) == 4
    assert physical_cores(CPUINFO, allowed={0, 4}) == 1  # the two threads of one core
    assert physical_cores(CPUINFO, allowed={0, 1, 2}) == 3
    no_core_ids = "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n"
    assert physical_cores(no_core_ids, allowed={0, 1}) == 2  # counts processors instead
    assert physical_cores("", allowed={0, 1, 2}) == 3
    import os

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_default_threads_share_the_cores_among_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert default_threads(1, cores=8) == 8
    assert default_threads(3, cores=8) == 2
    assert default_threads(4, cores=2) == 1  # one each when there are no more cores
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert default_threads(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(fixtures, "physical_cores", lambda: 5)
    assert default_threads(2) == 2


# --- sharded checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint saved in shards of at most 20 KB, with its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("sharded") / "tiny_sharded"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    model.save_pretrained(path, max_shard_size="20KB")
    for file in tiny_checkpoint.glob("tokenizer*"):
        shutil.copy(file, path / file.name)
    return path


def _copy(checkpoint: Path, to: Path) -> Path:
    shutil.copytree(checkpoint, to)
    return to


def test_a_sharded_checkpoint_loads_with_the_scores_of_the_unsharded_one(
    sharded: Path, tiny_checkpoint: Path
) -> None:
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    assert (sharded / "model.safetensors.index.json").is_file()
    check_spec(str(sharded))
    whole = HFModel.load(str(tiny_checkpoint), device="cpu")
    split = HFModel.load(str(sharded), device="cpu", dtype="float32")
    assert split.content_hash == whole.content_hash  # the same tensors, bit for bit
    assert split.score_answers(REQUESTS) == whole.score_answers(REQUESTS)


def test_a_missing_shard_is_refused_before_loading_naming_it(sharded: Path, tmp_path: Path) -> None:
    broken = _copy(sharded, tmp_path / "missing")
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(
        ModelSpecError, match=rf"1 of the \d+ weight shards .* missing: {shard.name}"
    ):
        check_checkpoint(broken)
    for file in broken.glob("model-*.safetensors"):
        file.unlink()
    with pytest.raises(ModelSpecError, match=r"\d+ of the \d+ weight shards .* are missing"):
        check_checkpoint(broken)  # not "no weights": the index says which


def test_a_bad_index_is_refused(sharded: Path, tmp_path: Path) -> None:
    broken = _copy(sharded, tmp_path / "bad_index")
    index = broken / "model.safetensors.index.json"
    index.write_text("{not json")
    with pytest.raises(ModelSpecError, match=r"index\.json: not a JSON file"):
        check_checkpoint(broken)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ModelSpecError, match="expected a non-empty 'weight_map'"):
        check_checkpoint(broken)
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "../../etc/passwd"}}))
    with pytest.raises(ModelSpecError, match="refused: shard names that are not files"):
        check_checkpoint(broken)


def test_a_shard_left_out_of_the_index_is_refused_as_missing_tensors(
    sharded: Path, tmp_path: Path
) -> None:
    broken = _copy(sharded, tmp_path / "short_index")
    index = broken / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    left_out = sorted(set(content["weight_map"].values()))[1]
    content["weight_map"] = {k: v for k, v in content["weight_map"].items() if v != left_out}
    index.write_text(json.dumps(content))
    check_checkpoint(broken)  # the index itself is sound
    with pytest.raises(ModelSpecError, match="missing from the checkpoint"):
        HFModel.load(str(broken), device="cpu")


# --- device auto ---------------------------------------------------------------------------------


def test_device_auto_without_accelerate_is_a_clear_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unlearncheck import specs

    monkeypatch.setattr(specs, "_has_accelerate", lambda: False)
    with pytest.raises(ValueError, match=r"device 'auto' .* needs the accelerate package"):
        resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")  # one named device needs none
    config = _config(pytester, "--uc-device=auto")
    with pytest.raises(pytest.UsageError, match=r"^--uc-device: device 'auto' .* accelerate"):
        plugin_options.check_inputs(config, get_options(config))


def test_loading_a_checkpoint_draws_no_weight_bar_where_no_one_watches(
    tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Captured (not a terminal), a load leaves no "Loading weights" bar; transformers' global
    switch is left as it was."""
    before = hf_logging.is_progress_bar_enabled()
    HFModel.load(str(tiny_checkpoint), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before
