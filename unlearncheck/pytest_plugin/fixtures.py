"""The plugin's fixtures (the models, the facts, the probe generator, the settings), model
loading, and the share of GPUs and CPU cores of each pytest-xdist worker."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from unlearncheck.pytest_plugin.options import Options, get_options, suite_facts

if TYPE_CHECKING:
    from unlearncheck.backends.hf import HFModel
    from unlearncheck.backends.openai_api import OpenAIModel
    from unlearncheck.facts import FactSet
    from unlearncheck.generator import ProbeGenerator

__all__ = [
    "default_threads",
    "facts",
    "generator",
    "original",
    "physical_cores",
    "pin_gpu",
    "reference",
    "uc_options",
    "unlearned",
    "worker_gpu",
]


def worker_gpu(worker: str, visible: Sequence[str]) -> str | None:
    """The GPU an xdist worker (``gw<n>``) uses: the n-th of the ``visible`` ones, round robin
    (None when fewer than two are visible, or for a process that is not a worker)."""
    if len(visible) < 2 or not worker.startswith("gw"):
        return None
    return visible[int(worker[2:]) % len(visible)]


def pin_gpu(worker: str) -> None:
    """Make only this worker's GPU visible to it (``CUDA_VISIBLE_DEVICES``), within those the
    user left visible, before CUDA starts: each worker then loads its models on its own GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        # Counted through NVML, which neither starts CUDA nor caches the count.
        ids = [str(i) for i in range(torch.cuda.device_count())]
    else:
        ids = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    gpu = worker_gpu(worker, ids)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def physical_cores(cpuinfo: str | None = None, allowed: Collection[int] | None = None) -> int:
    """The physical CPU cores this process may run on: the distinct (``physical id``,
    ``core id``) pairs of ``/proc/cpuinfo`` among the processors of its affinity mask, so two
    hyper-threads of one core count once.

    Where ``/proc/cpuinfo`` gives no core ids (not Linux, some ARM kernels), the processors of the
    affinity mask, else ``os.cpu_count()``, are counted instead.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (None: read it).
        allowed: The processor numbers this process may run on (None: ``os.sched_getaffinity``
            where there is one, else every processor).
    """
    if allowed is None and hasattr(os, "sched_getaffinity"):
        allowed = os.sched_getaffinity(0)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    cores: set[tuple[str, str]] = set()
    complete = False
    for block in cpuinfo.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
        if "processor" not in fields:
            continue
        if "core id" not in fields or not fields["processor"].isdigit():
            complete = False  # a processor without a core id: count processors instead
            break
        complete = True
        if allowed is None or int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    if complete and cores:
        return len(cores)
    return len(allowed) if allowed else os.cpu_count() or 1


def default_threads(workers: int = 1, cores: int | None = None) -> int:
    """Torch intra-op threads of one of ``workers`` processes sharing the machine: its share of
    the ``cores`` (None: ``$OMP_NUM_THREADS`` when set to a count, else `physical_cores`), at
    least one (one each when there are no more cores than workers).

    Without it every xdist worker starts one thread per core and they spin against each other
    (on two cores, ``-n 2`` ran the claims suite four times slower than one process).
    """
    if cores is None:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        cores = int(omp) if omp.isdigit() and int(omp) > 0 else physical_cores()
    return max(1, cores // max(1, workers))


def _set_threads(config: pytest.Config) -> None:
    """Set torch's intra-op threads of this process: ``--uc-threads``, else `default_threads` for
    the number of xdist workers (one process without xdist)."""
    threads = get_options(config).threads
    if threads is None:
        workers = getattr(config, "workerinput", {}).get("workercount") or 1
        threads = default_threads(int(workers))
    import torch

    torch.set_num_threads(threads)


def _load(config: pytest.Config, spec: str | None) -> HFModel | OpenAIModel | None:
    if spec is None:
        return None
    from unlearncheck.loading import load_model

    _set_threads(config)
    options = get_options(config)
    return load_model(
        spec,
        device=options.device,
        dtype=options.dtype,
        prompt_format=options.prompt_format,
        allow_pickle=options.allow_pickle,
        trust_remote_code=options.trust_remote_code,
    )


@pytest.fixture(scope="session")
def uc_options(pytestconfig: pytest.Config) -> Options:
    """The unlearncheck settings of this session (models, facts, device, seed, report paths)."""
    return get_options(pytestconfig)


@pytest.fixture(scope="session")
def unlearned(pytestconfig: pytest.Config) -> HFModel | OpenAIModel:
    """The model under test (``--uc-model``), loaded once per worker."""
    spec = get_options(pytestconfig).model
    if spec is None:
        pytest.fail("no model under test: pass --uc-model (or set uc_model in the ini file)")
    model = _load(pytestconfig, spec)
    assert model is not None
    return model


@pytest.fixture(scope="session")
def original(pytestconfig: pytest.Config) -> HFModel | OpenAIModel | None:
    """The model before unlearning (``--uc-original``), or None."""
    return _load(pytestconfig, get_options(pytestconfig).original)


@pytest.fixture(scope="session")
def reference(pytestconfig: pytest.Config) -> HFModel | OpenAIModel | None:
    """The retrained reference model (``--uc-reference``), or None."""
    return _load(pytestconfig, get_options(pytestconfig).reference)


@pytest.fixture(scope="session")
def generator(pytestconfig: pytest.Config) -> ProbeGenerator:
    """The probe generator: ``generator.llm_paraphrase`` and ``generator.llm_alias`` when
    ``--uc-generator-url`` and ``--uc-generator-model`` name a generator LLM, and
    ``generator.elicited_multihop(original)`` always. Replies are cached in
    ``generator.sqlite`` next to the score cache (in memory with ``--uc-cache off``)."""
    from unlearncheck.generator import GeneratorCache, GeneratorConfig, ProbeGenerator
    from unlearncheck.generator.cache import CACHE_FILE

    options = get_options(pytestconfig)
    path = options.cache.with_name(CACHE_FILE) if options.cache is not None else None
    config = GeneratorConfig(base_url=options.generator_url, model=options.generator_model)
    return ProbeGenerator(config, GeneratorCache(path))


@pytest.fixture(scope="session")
def facts(pytestconfig: pytest.Config) -> FactSet:
    """The facts of the claims: ``--uc-facts``, else the zoo's facts for an organism model."""
    return suite_facts(pytestconfig)
