"""Probe generation beyond the templates: a generator LLM (any OpenAI-compatible chat endpoint)
writes paraphrases and aliases, and multi-hop chains are elicited from the original model.

``ProbeGenerator(GeneratorConfig(base_url=..., model=...))`` gives the attacks ``llm_paraphrase``
and ``llm_alias`` (they need the generator LLM) and ``elicited_multihop(original)`` (it needs only
the model that is questioned); `generate_facts` exports what was generated as a facts file. Every
reply is cached on disk (`GeneratorCache`). The names load on first use: the settings
(``unlearncheck.generator.config``) import nothing heavy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unlearncheck.generator.attacks import ProbeGenerator
    from unlearncheck.generator.cache import GeneratorCache, default_cache_path
    from unlearncheck.generator.config import GeneratorConfig
    from unlearncheck.generator.elicit import Chain, ElicitedGraph, Elicitor, Schema, Triple
    from unlearncheck.generator.export import Generated, generate_facts
    from unlearncheck.generator.llm import GeneratorLLM, Screened

_MODULES = {
    "Chain": "elicit",
    "ElicitedGraph": "elicit",
    "Elicitor": "elicit",
    "Generated": "export",
    "GeneratorCache": "cache",
    "GeneratorConfig": "config",
    "GeneratorLLM": "llm",
    "ProbeGenerator": "attacks",
    "Schema": "elicit",
    "Screened": "llm",
    "Triple": "elicit",
    "default_cache_path": "cache",
    "generate_facts": "export",
}

__all__ = [
    "Chain",
    "ElicitedGraph",
    "Elicitor",
    "Generated",
    "GeneratorCache",
    "GeneratorConfig",
    "GeneratorLLM",
    "ProbeGenerator",
    "Schema",
    "Screened",
    "Triple",
    "default_cache_path",
    "generate_facts",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(f"unlearncheck.generator.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'unlearncheck.generator' has no attribute {name!r}")
