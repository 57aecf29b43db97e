"""A stop signal becomes one exception that propagates, wherever in Python it lands."""

from __future__ import annotations

import signal
import time
import weakref

import pytest

from rosebench import signals
from rosebench.signals import Interrupted, stop_signals_as_interrupt


def test_a_stop_signal_that_lands_in_a_weakref_callback_is_delivered_again(monkeypatch):
    # In-process: no stop mark to write, no children to stop, and the module's record restored after.
    monkeypatch.setattr(signals, "stopped_by", None)
    monkeypatch.setattr(signals, "_on_stop", [])
    monkeypatch.setattr(signals, "_stop_children", lambda signum: None)

    class Thing:
        pass

    def landed_here(_ref: weakref.ref) -> None:  # what the handler does if the signal arrives here
        raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted) as stopped, stop_signals_as_interrupt():
        thing = Thing()
        ref = weakref.ref(thing, landed_here)
        del thing  # Python cannot propagate from the callback: it reports it as unraisable
        time.sleep(10)  # the signal, sent again, raises at the next safe point: here
    assert stopped.value.signum == signal.SIGTERM and ref() is None
