"""``ecomjax data download NAME``: fetch a public dataset into the data directory, checked.

Configs name their data relative to the data directory (``amazon-beauty/Beauty.txt``, see
``ecomjax.data.files``), and the numbers in ``docs/`` were measured on exact files. A new machine
needs those same bytes: a file that changed upstream, or that was cut short on the way, must stop
the download with a message, never end up under a config's path. So every downloadable file here
has a URL pinned to a commit, its size and its sha256; a file is streamed to a temporary name
beside its target, checked, and only then renamed into place. A file already in place with the
registered hash is not downloaded again.

How the checksums were obtained: the repositories named in each entry were read as git snapshots
(``git ls-tree``, ``git show COMMIT:PATH``) at the commit in the URL. Each file's blob id there
equals ``git hash-object`` of the copy the project's benchmarks ran on, so the bytes behind each
URL are those bytes; the sha256 and size registered are ``git show COMMIT:PATH | sha256sum``
and ``| wc -c``. ``movielens-1m/ml-1m.txt`` is converted from DiffuRec's ``dataset.pkl`` (a pickle
of plain dicts and lists): the conversion below reproduces the benchmarks' file byte for byte,
and its sha256 is checked after converting. Nothing here was hashed from a download that could
not be compared so: where there is no public file (Kaggle datasets, GroupLens zips, files the
project joined itself), the entry says how to obtain it by hand and carries no checksum.

A mirror (``--mirror URL`` or ``$ECOMJAX_DOWNLOAD_MIRROR``) replaces the scheme and host of every
URL by its base, keeping the host as the first path part:
``https://raw.githubusercontent.com/OWNER/REPO/COMMIT/PATH`` is read from
``MIRROR/raw.githubusercontent.com/OWNER/REPO/COMMIT/PATH``, the layout ``wget -x URL`` writes.
``http://``, ``https://`` and ``file://`` bases work (``file:///srv/mirror`` for a copied folder);
what a mirror serves is checked against the same hashes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ecomjax.data.files import data_dir
from ecomjax.errors import ChangedDataError, DataFormatError, MissingFileError, UnknownKeyError

MIRROR_VARIABLE = "ECOMJAX_DOWNLOAD_MIRROR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60

# Commits the URLs are pinned to (each repository's default branch head when the hashes were taken).
_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5"
_DIFFUREC = "https://raw.githubusercontent.com/WHUIR/DiffuRec/f6f70c9d78477591742c71c9ed83e5f1269530e8"
_EHCF = "https://raw.githubusercontent.com/chenchongthu/EHCF/d3c487357c666d3e4c96121800f8de1668ea889f"


class ManualDownloadError(MissingFileError):
    """A file the dataset needs has no public URL and is not in place; ``steps`` say how to get it."""

    def __init__(self, message: str, steps: list[str]):
        super().__init__(message)
        self.steps = steps


@dataclass(frozen=True)
class Remote:
    """A file at a public URL, used only once its size and sha256 are these."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, at ``path`` under the data directory."""

    path: str
    remote: Remote | None = None  # None: no public file (``manual`` says how to get it)
    convert: Callable[[Path, Path], None] | None = None  # downloaded file -> file at ``path``
    sha256: str | None = None  # of the converted file (without ``convert``: the remote's)
    size: int | None = None
    manual: tuple[str, ...] = ()  # steps by hand, ``{dir}`` standing for the data directory
    required: bool = True  # False: only some configs use it (a missing one is a note, not an error)

    @property
    def expected(self) -> tuple[str, int] | None:
        """(sha256, size) of the file in place, when known."""
        if self.remote is None:
            return None
        if self.convert is None:
            return self.remote.sha256, self.remote.size
        return (self.sha256, self.size) if self.sha256 and self.size else None


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: its files under the data directory and whose terms they come under."""

    name: str
    files: tuple[DataFile, ...]
    licence: str  # whose data it is and on what terms
    aliases: tuple[str, ...] = ()

    @property
    def download_size(self) -> int:
        return sum(f.remote.size for f in self.files if f.remote is not None)


def _ml1m_sequences(source: Path, target: Path) -> None:
    """DiffuRec's MovieLens-1M ``dataset.pkl`` -> ``ml-1m.txt``: one line per user, ``user movie
    movie ...`` in time order with the original MovieLens ids (train + validation + test items)."""
    with source.open("rb") as handle:
        try:
            data = _PlainUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataFormatError(f"{source}: not a readable pickle ({exc})") from None
    try:
        users = {index: original for original, index in data["umap"].items()}
        movies = {index: original for original, index in data["smap"].items()}
        lines = [" ".join(map(str, [users[u]] + [movies[i] for part in ("train", "val", "test")
                                                 for i in data[part][u]]))
                 for u in sorted(data["train"])]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{source}: not DiffuRec's dataset layout (train/val/test/umap/smap): "
                              f"{type(exc).__name__} {exc}") from None
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")


class _PlainUnpickler(pickle.Unpickler):
    """Reads dicts, lists, strings and numbers only: a pickle naming any class or function fails."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refers to {module}.{name}; only plain containers are read")


def _s3rec(folder: str, stem: str, files: tuple[tuple[str, str, int], ...]) -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{folder}/{stem}{suffix}", Remote(f"{_S3REC}/data/{stem}{suffix}", sha, size))
                 for suffix, sha, size in files)


_AMAZON = ("Amazon review data (McAuley et al.), S3-Rec preprocessing (RUCAIBox/CIKM2020-S3Rec, "
           "no licence file): research use")

DATASETS: tuple[Dataset, ...] = (
    Dataset("beauty", (
        *_s3rec("amazon-beauty", "Beauty", (
            (".txt", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8", 1090094),
            ("_item2attributes.json", "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4", 305674),
        )),
        DataFile("amazon-beauty/Beauty_titles.tsv", required=False, manual=(
            "amazon-beauty/Beauty_titles.tsv (configs sasrec_beauty_text*.yaml only) has no public copy: it joins "
            "S3-Rec item ids to ASINs through the P5 id maps and to titles from dh-r/LLM-Sequential-Recommendation; "
            "write it as s3rec_item_id<TAB>asin<TAB>title, one line per item, into {dir}/amazon-beauty/",)),
    ), _AMAZON, aliases=("amazon-beauty",)),
    Dataset("sports", _s3rec("amazon-sports", "Sports_and_Outdoors", (
        (".txt", "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2", 1707483),
        ("_item2attributes.json", "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b", 653780),
    )), _AMAZON, aliases=("amazon-sports",)),
    Dataset("toys", _s3rec("amazon-toys", "Toys_and_Games", (
        (".txt", "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f", 922166),
        ("_item2attributes.json", "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0", 327536),
    )), _AMAZON, aliases=("amazon-toys",)),
    Dataset("ml-1m", (
        DataFile("movielens-1m/ml-1m.txt",
                 Remote(f"{_DIFFUREC}/datasets/data/ml-1m/dataset.pkl",
                        "24517f75352c088e6163b0f1a1d61932390c08d837e191e02d09d1d35dc63ea4", 3101987),
                 convert=_ml1m_sequences,
                 sha256="3b3803d72c034929ada18b2cbd114296261c012b7a3e10282543adeceba53fb1", size=4749878),
        DataFile("movielens-1m/movies.dat", required=False, manual=(
            "movielens-1m/movies.dat (titles and genres; no config reads it) comes only from GroupLens, whose terms "
            "forbid redistribution: download https://files.grouplens.org/datasets/movielens/ml-1m.zip and run "
            "`unzip -j ml-1m.zip ml-1m/movies.dat -d {dir}/movielens-1m` (no checksum registered)",)),
    ), "MovieLens 1M (GroupLens, University of Minnesota): research use, no redistribution; sequences as "
       "published by WHUIR/DiffuRec (MIT)", aliases=("movielens-1m",)),
    Dataset("taobao", tuple(
        DataFile(f"taobao/{name}", Remote(f"{_EHCF}/data/Taobao/{name}", sha, size)) for name, sha, size in (
            ("buy.train.txt", "cd478ba8cb5425bf4ca414023e24eb41008a702e9648d6fa6e49f8f3945c45f2", 2425047),
            ("buy.test.txt", "ba01b48de1f067c17d822d732f3cd91a04ba08afeafb6eacc3b25e7e27e5361b", 560357),
            ("cart.csv", "fb1357e6fcae76c10e3df1ac5f8ad2f1cbcc58d59e42d76bbe5585eae7601a13", 3194813),
        )), "Taobao purchase and add-to-cart logs as preprocessed by the EHCF authors (chenchongthu/EHCF, "
            "no licence file): research use"),
    Dataset("fashion", (
        DataFile("fashion-products/styles.csv", manual=(
            "Fashion Product Images (Small) is on Kaggle only (an account and an API token in ~/.kaggle/kaggle.json):",
            "kaggle datasets download -d paramaggarwal/fashion-product-images-small -p {dir}/fashion-products/kaggle "
            "--unzip",
            "copy its styles.csv to {dir}/fashion-products/styles.csv, quoting the titles that contain commas "
            "(ecomjax rejects a row with more than 10 fields)",)),
        DataFile("fashion-products/images-128.zip", manual=(
            "resize each product photo to 128x128 RGB JPEG and store it as <id>.jpg (no folder) in "
            "{dir}/fashion-products/images-128.zip",)),
    ), "Kaggle dataset by Param Aggarwal (Myntra catalogue): Kaggle's terms, no direct URL",
       aliases=("fashion-products",)),
    Dataset("homedepot", (
        DataFile("homedepot/train.csv", manual=(
            "Home Depot Product Search Relevance is a Kaggle competition: accept its rules at "
            "https://www.kaggle.com/c/home-depot-product-search-relevance/rules, put an API token in "
            "~/.kaggle/kaggle.json, then:",
            "kaggle competitions download -c home-depot-product-search-relevance -f train.csv.zip -p {dir}/homedepot",
            "unzip -p {dir}/homedepot/train.csv.zip train.csv | iconv -f ISO-8859-1 -t UTF-8 > "
            "{dir}/homedepot/train.csv",
            "rm {dir}/homedepot/train.csv.zip",
            "(Kaggle's train.csv is Latin-1 with 74,067 pairs; ecomjax reads UTF-8. The benchmarks in docs/ ran on "
            "80% of its queries, 59,179 pairs.)",)),
    ), "Kaggle competition data (Home Depot, 2016): the competition's rules, no redistribution"),
)


def dataset(name: str) -> Dataset:
    """The registered dataset called ``name`` (or one of its aliases, e.g. its folder name)."""
    for entry in DATASETS:
        if name == entry.name or name in entry.aliases:
            return entry
    raise UnknownKeyError(f"unknown dataset {name!r}; known: {', '.join(d.name for d in DATASETS)}")


def mirror_url(url: str, mirror: str | None) -> str:
    """``url`` as read from ``mirror``: ``MIRROR/HOST/PATH`` (the URL unchanged without one)."""
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{url.split('://', 1)[-1]}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, remote: Remote, target: Path, temporary: Path, progress: bool) -> None:
    """Stream ``url`` into ``temporary``; raise unless it is ``remote``'s size and sha256."""
    from tqdm import tqdm

    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, temporary.open("wb") as out, \
                tqdm(total=remote.size, unit="B", unit_scale=True, desc=target.name, leave=False,
                     disable=None if progress else True) as bar:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > remote.size:  # a wrong URL or an error page: stop before filling the disk
                    break
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTP errors, timeouts, bad URLs
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise MissingFileError(f"{target}: could not download {url} ({reason})") from None
    if size != remote.size:
        got = f"more than {remote.size}" if size > remote.size else str(size)
        raise ChangedDataError(f"{target}: download from {url} is {got} bytes, expected {remote.size}; "
                               "nothing was written")
    if digest.hexdigest() != remote.sha256:
        raise ChangedDataError(f"{target}: sha256 of the download from {url} is {digest.hexdigest()}, expected "
                               f"{remote.sha256}; nothing was written")


def _install(file: DataFile, target: Path, mirror: str | None, progress: bool) -> None:
    """Download (and convert) ``file`` to ``target``: temporary files beside it, renamed when checked."""
    assert file.remote is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    url = mirror_url(file.remote.url, mirror)
    made: list[Path] = []

    def temporary(suffix: str) -> Path:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
        os.close(fd)
        made.append(Path(name))
        return made[-1]

    try:
        downloaded = temporary(".part")
        _fetch(url, file.remote, target, downloaded, progress)
        ready = downloaded
        if file.convert is not None:
            ready = temporary(".converted")
            file.convert(downloaded, ready)
            sha, size = sha256_of(ready), ready.stat().st_size
            if (sha, size) != (file.sha256, file.size):
                raise ChangedDataError(f"{target}: converted from {url}, its sha256 is {sha} ({size} bytes), "
                                       f"expected {file.sha256} ({file.size} bytes); nothing was written")
        os.chmod(ready, 0o644)
        os.replace(ready, target)
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Outcome:
    """What ``download`` did with one file: ``downloaded``, ``present`` (right hash, not fetched
    again), ``present-unchecked`` (a manual file, no checksum to compare) or ``missing`` (an
    optional manual file; ``steps`` say how to get it)."""

    file: DataFile
    target: Path
    status: str
    steps: tuple[str, ...] = ()


def _steps(file: DataFile, root: Path) -> tuple[str, ...]:
    return tuple(step.format(dir=root) for step in file.manual)


def download(name: str, directory: str | Path | None = None, *, mirror: str | None = None,
             force: bool = False, progress: bool = True,
             report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Put dataset ``name`` under ``directory`` (default: the data directory, ``data_dir()``).

    ``mirror`` (default ``$ECOMJAX_DOWNLOAD_MIRROR``) replaces each URL's scheme and host. A file
    in place with another hash raises ``ChangedDataError`` unless ``force`` replaces it. Required
    files with no public URL that are not in place raise ``ManualDownloadError`` after the others
    are in place; its ``steps`` say how to get them. ``report`` is called with each file's outcome
    as it is decided.
    """
    entry = dataset(name)
    root = Path(directory).expanduser() if directory is not None else data_dir()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_VARIABLE) or None
    outcomes: list[Outcome] = []

    def decide(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if report is not None:
            report(outcome)

    for file in entry.files:
        target = root / file.path
        if file.remote is None:
            present = target.is_file()
            decide(Outcome(file, target, "present-unchecked" if present else "missing",
                           () if present else _steps(file, root)))
            continue
        sha, _ = file.expected
        if target.is_file() and not force:
            found = sha256_of(target)
            if found == sha:
                decide(Outcome(file, target, "present"))
                continue
            raise ChangedDataError(f"{target}: already there with sha256 {found}, expected {sha}; move it away "
                                   "or pass --force to replace it")
        _install(file, target, mirror, progress)
        decide(Outcome(file, target, "downloaded"))
    needed = [o for o in outcomes if o.status == "missing" and o.file.required]
    if needed:
        paths = ", ".join(str(o.target) for o in needed)
        raise ManualDownloadError(f"{entry.name}: {paths} not in place and not downloadable; follow the steps "
                                  "printed above", [step for o in needed for step in o.steps])
    return outcomes


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size else "-"


def table(datasets: Iterable[Dataset] = DATASETS) -> str:
    """The registry as text: name, files (``*``: by hand), download size, licence."""
    rows = [("name", "files (under the data directory; * = by hand, see the steps)", "size", "licence")]
    for entry in datasets:
        files = ", ".join(f.path + ("" if f.remote else "*") for f in entry.files)
        rows.append((entry.name, files, _megabytes(entry.download_size), entry.licence))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:{widths[0]}}  {b:{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows)
