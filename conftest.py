"""Root configuration: the claims suite (``probes/``) runs against the embedded model organism.

The command line and the ini file win over these defaults: ``pytest probes/ --uc-model
organism:gold`` checks the ideal variant instead, ``--uc-model path/to/checkpoint --uc-original
path/to/base --uc-facts facts.jsonl`` a real model. Nothing is loaded unless a test asks for a
model, so the framework's own tests (``pytest tests``) are unaffected.
"""

from __future__ import annotations

import pytest

from unlearncheck.pytest_plugin import set_defaults


def pytest_configure(config: pytest.Config) -> None:
    """Default models of the claims suite: the NPO+GD zoo variant and its original."""
    set_defaults(config, model="organism:npo_gd", original="organism:original")
