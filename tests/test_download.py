"""``ecomjax data download``: the registered URLs, sizes and hashes, served from a local mirror.

A local HTTP server plays the mirror (``MIRROR/HOST/PATH``) and serves the real files of
``$ECOMJAX_DATA_DIR`` at their registered upstream paths, so the registered checksums are checked
against the real bytes (under CI a missing file fails, as everywhere else).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
from conftest import Mirror, real_data, url_path

from ecomjax.cli import main
from ecomjax.data import download as dl
from ecomjax.errors import ChangedDataError, DataFormatError, UnknownKeyError


@pytest.fixture
def mirror():
    server = Mirror()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_download_checks_the_real_files_and_lays_them_out(mirror, tmp_path):
    mirror.serve("beauty")
    mirror.serve("taobao")
    for name in ("beauty", "taobao"):
        outcomes = dl.download(name, tmp_path, mirror=mirror.base, progress=False)
        for outcome in outcomes:
            if outcome.file.remote is not None:
                assert outcome.status == "downloaded"
                assert outcome.target == tmp_path / outcome.file.path  # the layout the configs expect
                assert outcome.target.read_bytes() == real_data(outcome.file.path).read_bytes()
                assert hashlib.sha256(outcome.target.read_bytes()).hexdigest() == outcome.file.remote.sha256
    assert (tmp_path / "amazon-beauty/Beauty.txt").is_file() and (tmp_path / "taobao/cart.csv").is_file()
    titles = [o for o in dl.download("beauty", tmp_path, mirror=mirror.base) if o.status == "missing"]
    assert [o.file.path for o in titles] == ["amazon-beauty/Beauty_titles.tsv"] and "P5" in titles[0].steps[0]
    assert _leftovers(tmp_path) == []
    assert all(p.startswith("/raw.githubusercontent.com/") for p in mirror.requests)


@pytest.mark.parametrize("damage", ["byte", "truncated", "longer"])
def test_a_corrupted_download_names_the_file_and_leaves_nothing(mirror, tmp_path, damage):
    mirror.serve("beauty")
    file = dl.dataset("beauty").files[0]
    good = mirror.files[url_path(file)]
    bad = {"byte": good[:1000] + bytes([good[1000] ^ 1]) + good[1001:], "truncated": good[:-10],
           "longer": good + b"1 2 3\n"}[damage]
    mirror.files[url_path(file)] = bad
    message = (rf"Beauty\.txt: sha256 of the download from .* is {hashlib.sha256(bad).hexdigest()}, expected "
               rf"{file.remote.sha256}; nothing was written" if damage == "byte"
               else r"Beauty\.txt: .* bytes, expected")
    with pytest.raises(ChangedDataError, match=message) as caught:
        dl.download("beauty", tmp_path, mirror=mirror.base, progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / file.path).exists()
    assert _leftovers(tmp_path) == []


def test_a_rerun_downloads_nothing_and_a_changed_file_is_not_replaced(mirror, tmp_path):
    mirror.serve("beauty")
    dl.download("beauty", tmp_path, mirror=mirror.base, progress=False)
    asked = len(mirror.requests)
    assert asked == 2
    again = dl.download("beauty", tmp_path, mirror=mirror.base, progress=False)
    assert len(mirror.requests) == asked
    assert [o.status for o in again if o.file.remote] == ["present", "present"]
    target = tmp_path / "amazon-beauty/Beauty.txt"
    target.write_bytes(b"1 2 3\n")
    with pytest.raises(ChangedDataError, match=r"Beauty\.txt: already there with sha256 .*--force"):
        dl.download("beauty", tmp_path, mirror=mirror.base, progress=False)
    assert target.read_bytes() == b"1 2 3\n" and len(mirror.requests) == asked
    dl.download("beauty", tmp_path, mirror=mirror.base, progress=False, force=True)
    assert target.read_bytes() == real_data("amazon-beauty/Beauty.txt").read_bytes()


def test_an_unreachable_file_is_one_line_naming_it(mirror, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Beauty\.txt: could not download http://127\.0\.0\.1.*404"):
        dl.download("beauty", tmp_path, mirror=mirror.base, progress=False)
    assert _leftovers(tmp_path) == []


def test_homedepot_prints_the_kaggle_steps(capsys, tmp_path):
    assert main(["data", "download", "homedepot", "--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert (f"kaggle competitions download -c home-depot-product-search-relevance -f train.csv.zip -p "
            f"{tmp_path}/homedepot") in out
    assert f"iconv -f ISO-8859-1 -t UTF-8 > {tmp_path}/homedepot/train.csv" in out
    assert err.count("\n") == 1 and f"{tmp_path}/homedepot/train.csv not in place" in err
    (tmp_path / "homedepot").mkdir()
    (tmp_path / "homedepot/train.csv").write_text("id,product_uid,product_title,search_term,relevance\n")
    assert main(["data", "download", "homedepot", "--dir", str(tmp_path)]) == 0
    assert "present-unchecked" in capsys.readouterr().out


def test_unknown_name_and_the_list(capsys):
    assert main(["data", "download", "beuaty"]) == 2
    err = capsys.readouterr().err
    assert err == ("ecomjax: error: unknown dataset 'beuaty'; known: beauty, sports, toys, ml-1m, taobao, "
                   "fashion, homedepot\n")
    with pytest.raises(UnknownKeyError):
        dl.dataset("beuaty")
    assert dl.dataset("amazon-beauty").name == "beauty"
    for argv in (["data", "download"], ["data", "download", "--list"]):
        assert main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[0] == "name" and "licence" in lines[0]
        assert [line.split()[0] for line in lines[1:]] == [d.name for d in dl.DATASETS]


def test_mirror_keeps_the_host_as_the_first_path_part():
    url = "https://raw.githubusercontent.com/o/r/c/data/x.txt"
    assert dl.mirror_url(url, "http://m:8/base/") == "http://m:8/base/raw.githubusercontent.com/o/r/c/data/x.txt"
    assert dl.mirror_url(url, None) == url


def test_movielens_conversion_reproduces_the_real_file(tmp_path):
    """DiffuRec's pickle layout (0-based user and movie indices, train/val/test parts) converts
    back to ml-1m.txt byte for byte: built here from the real file, checked by its registered hash."""
    real = real_data("movielens-1m/ml-1m.txt")
    file = dl.dataset("ml-1m").files[0]
    rows = [list(map(int, line.split())) for line in real.read_text().splitlines()]
    umap = {row[0]: index for index, row in enumerate(rows)}
    smap: dict[int, int] = {}
    for row in rows:
        for movie in row[1:]:
            smap.setdefault(movie, len(smap) + 1)
    parts = {part: {umap[r[0]]: [smap[m] for m in r[1:]][cut] for r in rows}
             for part, cut in (("train", slice(None, -2)), ("val", slice(-2, -1)), ("test", slice(-1, None)))}
    source = tmp_path / "dataset.pkl"
    source.write_bytes(pickle.dumps({**parts, "umap": umap, "smap": smap}))
    file.convert(source, tmp_path / "ml-1m.txt")
    assert hashlib.sha256((tmp_path / "ml-1m.txt").read_bytes()).hexdigest() == file.sha256
    source.write_bytes(pickle.dumps({"train": Path("x")}))
    with pytest.raises(DataFormatError, match=r"dataset\.pkl: not a readable pickle .*pathlib"):
        file.convert(source, tmp_path / "other.txt")


def test_download_then_train_without_a_data_dir(mirror, monkeypatch, capsys, tmp_path):
    """The issue's acceptance: no $ECOMJAX_DATA_DIR, `data download beauty`, then train its config."""
    mirror.serve("beauty")
    monkeypatch.delenv("ECOMJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ECOMJAX_DOWNLOAD_MIRROR", mirror.base)
    train = ["train", "configs/sasrec_beauty.yaml", "train.epochs=1", "train.max_steps=5", "model.hidden_size=16",
             "model.ffn_size=16", "model.num_layers=1", "train.progress=false", f"workdir={tmp_path / 'run'}"]
    assert main(train) == 2
    assert f"not found as given or under the default data directory {tmp_path}/cache/data" in capsys.readouterr().err
    assert main(["data", "download", "beauty"]) == 0
    assert "downloaded        " + str(tmp_path / "cache/data/amazon-beauty/Beauty.txt") in capsys.readouterr().out
    assert main(train) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["test"]["ndcg@10"] >= 0
