"""The hypothesis profiles of unlearncheck's property tests, registered when the plugin loads.

`CI_PROFILE` (``unlearncheck-ci``): derandomized, no deadline, no example database, 10 examples,
no shrinking — the same examples every run. `FUZZ_PROFILE` (``unlearncheck-fuzz``): a random
search of 200 examples that shrinks what it finds. The pytest plugin imports this module, so both
are registered before hypothesis reads ``--hypothesis-profile``; a suite makes one its default
with ``settings.load_profile`` in its ``conftest.py`` and the command line still chooses.

`example_alpha` gives each example's claim its share of the suite's alpha under the profile that
is running.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

__all__ = ["CI_PROFILE", "FUZZ_PROFILE", "example_alpha"]

CI_PROFILE = "unlearncheck-ci"
FUZZ_PROFILE = "unlearncheck-fuzz"

_SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    CI_PROFILE,
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=10,
    phases=[Phase.explicit, Phase.generate, Phase.target],
    suppress_health_check=_SLOW,
)
settings.register_profile(
    FUZZ_PROFILE, deadline=None, max_examples=200, suppress_health_check=_SLOW
)


def example_alpha(alpha: float = 0.05, examples: int | None = None) -> float:
    """The ``alpha`` of each example's claim in a search of ``examples`` examples (default: the
    running profile's ``max_examples``, which hypothesis never exceeds): a search of n examples
    makes n claims, so each is judged at alpha / n, and a model that forgot everything fails the
    whole property with probability at most ``alpha`` (Bonferroni). A test that sets its own
    ``max_examples`` passes it as ``examples``."""
    n = settings().max_examples if examples is None else examples
    if n < 1:
        raise ValueError(f"examples must be at least 1, got {n}")
    return alpha / n
