"""Ctrl-C for the tests' children: a test suite started in the background (``make test &`` in a
script) hands every child SIGINT *ignored*, and Python keeps an inherited SIG_IGN, so a test that
sends a real ^C would see it ignored. ``preexec_fn=default_sigint`` gives the child the operator's
^C back, whatever the suite inherited."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
