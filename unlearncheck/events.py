"""Verdict listeners: how the pytest plugin (or any caller) sees the verdict of every claim.

Each finished claim (``assert_forgotten``, ``assert_retained``) publishes its `Verdict` here before
it raises or returns, so a FAIL is seen even though the assertion error unwinds the test.
"""

from __future__ import annotations

from collections.abc import Callable

from unlearncheck.verdict import Verdict

__all__ = ["publish", "subscribe", "unsubscribe"]


_Listener = Callable[[Verdict], None]
_listeners: list[_Listener] = []


def subscribe(listener: _Listener) -> None:
    """Call ``listener`` with every verdict from now on."""
    _listeners.append(listener)


def unsubscribe(listener: _Listener) -> None:
    """Stop calling ``listener`` (no error when it was not subscribed)."""
    if listener in _listeners:
        _listeners.remove(listener)


def publish(verdict: Verdict) -> None:
    """Hand ``verdict`` to every listener."""
    for listener in list(_listeners):
        listener(verdict)
