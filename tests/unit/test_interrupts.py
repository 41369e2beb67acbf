"""A stop by signal is one RunInterrupted, even where Ray swallows the handler's exception."""

import os
import signal

import pytest

import launch.interrupts as interrupts


def test_a_plain_keyboard_interrupt_stands_for_the_signal_the_handler_saw(monkeypatch):
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        interrupts.stop_on_signals()
        with pytest.raises(interrupts.RunInterrupted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    # what ray.wait raises instead, once the handler ran inside it
    converted = interrupts.as_run_interrupted(KeyboardInterrupt())
    assert isinstance(converted, interrupts.RunInterrupted) and str(converted) == "stopped by SIGTERM"
    already = interrupts.RunInterrupted("stopped by SIGINT")
    assert interrupts.as_run_interrupted(already) is already
    monkeypatch.setattr(interrupts, "_LAST_SIGNAL", "")
    assert str(interrupts.as_run_interrupted(KeyboardInterrupt())) == "stopped by SIGINT"  # a Ctrl-C before any handler
