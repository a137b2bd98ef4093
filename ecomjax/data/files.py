"""Finding data files, and what every reader shares: decoding text and parsing numbers strictly.

Configs name real datasets relative to the data directory (``amazon-beauty/Beauty.txt``,
``taobao``) so the same config works on a laptop, in CI and on a TPU VM: a path is taken as
given when it exists, else under the data directory: ``$ECOMJAX_DATA_DIR``, or when that is unset
``data/`` in the ecomjax cache (``$ECOMJAX_CACHE_DIR``, default ``~/.cache/ecomjax``), where
``ecomjax data download NAME`` puts the public datasets. This is the one place that reads
``$ECOMJAX_DATA_DIR``.

Every text input (data files and config files) is UTF-8, a byte-order mark allowed: a file that
is not (binary, Latin-1, UTF-16) fails naming the file, the line and the offending byte, not with
a ``UnicodeDecodeError`` that names nothing. Ids and counts are ASCII digits only: Python's
``int`` also takes ``1_0``, ``+6``, ``' 6'`` and Arabic-Indic digits, and a file that relies on
that is not the file its author thinks it is.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

from ecomjax.data.inputs import note_input
from ecomjax.errors import DataFormatError, EcomjaxError, MissingFileError

DATA_DIR_VARIABLE = "ECOMJAX_DATA_DIR"
CACHE_DIR_VARIABLE = "ECOMJAX_CACHE_DIR"  # also the root of ecomjax.encoders.weights.cache_dir()
INT32_MAX = 2**31 - 1  # ids held in int32 arrays (Taobao)
INT64_MAX = 2**63 - 1  # original ids kept beside remapped ones (int64 arrays)
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # no 'nan', '1_0', '٣'


def default_data_dir() -> Path:
    """The data directory when ``$ECOMJAX_DATA_DIR`` is unset: ``$ECOMJAX_CACHE_DIR/data``,
    default ``~/.cache/ecomjax/data`` (it need not exist)."""
    cache = os.environ.get(CACHE_DIR_VARIABLE)
    return (Path(cache).expanduser() if cache else Path.home() / ".cache" / "ecomjax") / "data"


def data_dir() -> Path:
    """Where relative data paths are looked up: ``$ECOMJAX_DATA_DIR``, else ``default_data_dir()``."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else default_data_dir()


def resolve_data_path(path: str | Path, *, directory: bool = False, key: str = "data.path") -> Path:
    """Find a data file (or, with ``directory``, a folder): as given, else under ``data_dir()``.

    A missing one raises ``FileNotFoundError`` naming the config ``key``, the path and where it
    was looked for.
    """
    exists = Path.is_dir if directory else Path.is_file
    candidate = Path(path).expanduser()
    if exists(candidate):
        return note_input(key, candidate)
    root = data_dir()
    if not candidate.is_absolute() and exists(root / candidate):
        return note_input(key, root / candidate)
    if os.environ.get(DATA_DIR_VARIABLE):
        where = f" or under {DATA_DIR_VARIABLE}={root}"
    else:
        where = (f" or under the default data directory {root} ({DATA_DIR_VARIABLE} is not set; "
                 "`ecomjax data download --list` shows the datasets it can fetch there)")
    kind = "directory" if directory else "file"
    raise MissingFileError(f"{key}: {kind} {str(path)!r} not found as given{where}")


def read_text(path: str | Path, *, error: type[EcomjaxError] = DataFormatError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped).

    A file with a NUL byte is binary, one with a UTF-16 byte-order mark is UTF-16, anything else
    that does not decode is not UTF-8: each raises ``error`` naming the file, the line and the
    byte offset.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(f"{path}: UTF-16 text; ecomjax reads UTF-8 (save the file as UTF-8)")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise error(f"{path}:{line}: binary file, not UTF-8 text (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def open_text(path: str | Path, *, newline: str | None = None) -> io.StringIO:
    """``read_text`` as a file object (lines, ``csv.reader``); ``newline`` as for ``open``."""
    return io.StringIO(read_text(path), newline=newline)


def parse_id(text: str, where: str, what: str = "id", *, high: int = INT64_MAX) -> int:
    """A non-negative integer in ASCII digits, at most ``high``; anything else is a
    ``DataFormatError`` naming ``where`` (``file:line``), what the value is, and the value."""
    if not (text.isascii() and text.isdigit()):
        raise DataFormatError(f"{where}: {what} {text!r} is not a non-negative integer (ASCII digits only)")
    value = int(text)
    if value > high:
        raise DataFormatError(f"{where}: {what} {value} is out of range; allowed: 0..{high}")
    return value


def parse_float(text: str) -> float | None:
    """A finite decimal number in ASCII (``-1``, ``0.5``, ``2e-3``), or None for anything else:
    ``nan``, ``inf``, ``1_0``, non-ASCII digits, a value too large for a float."""
    if not _FLOAT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
