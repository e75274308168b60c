"""The claims suite's default hypothesis profile: the same 10 examples every run
(``--hypothesis-profile unlearncheck-fuzz`` on the command line chooses the longer search)."""

from hypothesis import settings

from unlearncheck.hypothesis_profiles import CI_PROFILE

settings.load_profile(CI_PROFILE)
