"""Every error ecomjax raises for something the user can fix derives from ``EcomjaxError``.

One base lets the CLI tell a user's mistake (a key, a file, a line, a step: printed as one line,
exit code 2) from a defect in ecomjax (anything else: a traceback is a bug report). Each type
also derives from the built-in exception it refines (``ValueError``, ``FileNotFoundError``,
``KeyError``, ``FloatingPointError``), so ``except ValueError`` in user code keeps working.

A message names what is wrong and where: the config key, the file (and line), the workdir, the
stage and step; and, where there is one, what would have been accepted or the command to run.
"""

from __future__ import annotations

import sys


class EcomjaxError(Exception):
    """Base of every error about the user's input, data, workdir or run."""


class InputError(EcomjaxError, ValueError):
    """A value given to ecomjax (argument, id, option) that cannot be used."""


class ConfigError(InputError):
    """A configuration key or value that cannot be used; the message names the key."""


class DataFormatError(InputError):
    """A data file that does not follow its format; the message names the file and line."""


class MissingFileError(EcomjaxError, FileNotFoundError):
    """A file or directory the run needs is not there; the message names it and where it looked."""


class UnknownKeyError(EcomjaxError, KeyError):
    """A name (column, array, metric) that is not where it was looked up."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class WorkdirError(EcomjaxError, ValueError):
    """A workdir that cannot be used as asked: a file, another task's run, another config's run."""


class ChangedDataError(EcomjaxError, ValueError):
    """An input file differs from the one the run was trained on (size, mtime or sha256)."""


class CheckpointError(EcomjaxError, ValueError):
    """No checkpoint of a stage can be restored (every kept step is corrupt or partial)."""


class NonFiniteError(EcomjaxError, FloatingPointError):
    """A NaN or infinite loss, metric or score; the message names the stage and step or batch."""


def one_line(error: BaseException) -> str:
    """The error as the CLI prints it: its message on one line (a multi-line message keeps its
    first line and says how many more there are)."""
    text = str(error).strip() or type(error).__name__
    lines = text.splitlines()
    return lines[0] if len(lines) == 1 else f"{lines[0]} (+{len(lines) - 1} more lines with --debug)"


def warn(message: str) -> None:
    """Tell the user about something ecomjax worked around (a skipped corrupt checkpoint, changed
    data allowed by an option): one line on stderr, never silent."""
    print(f"ecomjax: warning: {message}", file=sys.stderr, flush=True)
