"""Errors a user can act on, and how the command-line entry points report them.

Every error the harness raises for bad input (config, data, budget, method options, an offline hub id, a
damaged result file) is a `HarnessError`: a message that says what is wrong and where, and a hint that says how
to fix it. The CLIs print it as one line, `error: <what, where> (<how to fix>)`, and exit with status 2;
`HARNESS_DEBUG=1` shows the traceback instead. Anything else is a bug or a runtime failure (out of memory, a
CUDA error): one line too, exit status 1, and the traceback with HARNESS_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

USAGE_EXIT = 2     # bad input: fix the config or the data and run again
FAILURE_EXIT = 1   # a run failed for another reason (its failure record says why)


class HarnessError(Exception):
    """Bad input. `hint`: how to fix it (shown in parentheses after the message)."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint

    def one_line(self) -> str:
        return one_line(str(self), self.hint)


class ConfigError(HarnessError, ValueError):
    default_hint = "see conf/ for the groups and their options, or run with --cfg job to print the composed config"


class DataError(HarnessError, ValueError):
    default_hint = "fix the file or point meta.data_dir / task.train_file / task.test_files at a good copy"


def one_line(message: str, hint: str = "") -> str:
    text = " ".join(str(message).split())
    hint = " ".join(str(hint or "").split())
    if hint and hint not in text:
        text += f" ({hint})"
    return f"error: {text}"


def debug() -> bool:
    return os.environ.get("HARNESS_DEBUG", "").lower() in ("1", "true", "yes")


def describe(exc: BaseException) -> str:
    """The one line for any exception: a HarnessError's own, else its type and message."""
    if isinstance(exc, HarnessError):
        return exc.one_line()
    return one_line(f"{type(exc).__name__}: {exc}", "HARNESS_DEBUG=1 shows the traceback")


def traceback_tail(exc: BaseException, lines: int = 12) -> list[str]:
    """The last lines of the formatted traceback (kept in a failure record)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text.rstrip("\n").splitlines()[-lines:]


def exit_status(exc: BaseException) -> int:
    return USAGE_EXIT if isinstance(exc, HarnessError) else FAILURE_EXIT


def report(exc: BaseException) -> int:
    """Prints the error for a person (the traceback too with HARNESS_DEBUG=1); returns the exit status."""
    if debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(describe(exc), file=sys.stderr, flush=True)
    return exit_status(exc)


def from_hydra(exc: BaseException) -> HarnessError:
    """A Hydra / OmegaConf composition error (unknown group option or key, bad override) as a ConfigError:
    Hydra's message without its search-path listing, and the first line of its cause ("Key 'x' is not in
    struct")."""
    message = " ".join(str(exc).split("Config search path")[0].split())
    cause = exc.__cause__ or exc.__context__
    first = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if first and first not in message:
        message += f": {first}"
    return ConfigError(f"config: {message}")


@contextlib.contextmanager
def cli_errors():
    """For `main()` functions: a HarnessError (or a Hydra composition error) becomes one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except HarnessError as exc:
        raise SystemExit(report(exc)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise SystemExit(report(from_hydra(exc))) from None
