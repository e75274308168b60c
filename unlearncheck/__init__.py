"""unlearncheck: a pytest-style test framework for unlearning claims."""
