"""Turn the library's own errors into one-sentence CLI errors, so users never see a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from talos_os.config.generate import GenerateError
from talos_os.pki import PKIError
from talos_os.talosconfig import TalosConfigError

# Errors whose message is already written for the operator.
USER_ERRORS: tuple[type[Exception], ...] = (TalosConfigError, GenerateError, PKIError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise expected failures as ``click.ClickException`` (printed as ``Error: ...``, exit 1)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"cannot access{where}: {exc.strerror or exc}") from None
