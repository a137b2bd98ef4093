"""Bad data files: every reader parses a file correctly or raises ``DataFormatError`` naming it.

Regression tests for what an adversarial tester found (inputs that are not UTF-8, ids Python's
``int`` takes but a file format does not, ids beyond their array's dtype, a reader's own error
path raising ``StopIteration``, empty CTR user ids pooling rows into one GAUC user, one id with
two titles, sequence data leave-one-out cannot split, empty files), then property tests:
generated files (random bytes, lines with corrupted fields, other encodings, other scripts'
digits) through each reader's public read function. A file that follows its format must read as
a strict parser reads it; any other must raise ``DataFormatError`` with the file in its one-line
message, never another exception and never a silently different result.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ecomjax.data import DataFormatError, read_sequence_file
from ecomjax.data.ctr_files import read_ctr_files
from ecomjax.data.fashion import COLUMNS as STYLE_COLUMNS
from ecomjax.data.fashion import read_fashion_catalog, read_styles
from ecomjax.data.item_text import read_item_attributes, read_item_titles
from ecomjax.data.relevance import read_relevance
from ecomjax.data.sequences import from_lists
from ecomjax.data.split import leave_one_out
from ecomjax.data.taobao import load_taobao

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

CTR_HEADER = "click,purchase,101,D1,205\n"
RELEVANCE_HEADER = "id,product_uid,product_title,search_term,relevance\n"
TITLES_HEADER = "item_id\tasin\ttitle\n"
STYLES_HEADER = ",".join(STYLE_COLUMNS) + "\n"
STYLE_ROW = "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def taobao_dir(root: Path, train: str | bytes = "0\t1\n0\t2\n1\t0\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "buy.train.txt", train if isinstance(train, bytes) else "uid\tsid\n" + train)
    write(root / "buy.test.txt", "uid\tsid\n0\t4\n1\t2\n")
    write(root / "cart.csv", "uid\tsid\t3\n0\t3\tcart\n")
    return root


def data_error(read, *args) -> str:
    with pytest.raises(DataFormatError) as info:
        read(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# Each reader with a good file (the body after a header line where the format has one) and the
# path its errors name: (read function, file to write, good content).
def readers(tmp_path: Path) -> dict[str, tuple]:
    return {
        "sequences": (read_sequence_file, tmp_path / "seq.txt", "1 2 3 4\n"),
        "ctr": (lambda p: read_ctr_files("ali_ccp", p, {}), tmp_path / "ctr.csv", CTR_HEADER + "1,0,5,0.5,a\n"),
        "relevance": (read_relevance, tmp_path / "rel.csv", RELEVANCE_HEADER + "1,7,Drill,drill,2\n"),
        "titles": (read_item_titles, tmp_path / "titles.tsv", TITLES_HEADER + "1\tA1\tRose Serum\n"),
        "attributes": (read_item_attributes, tmp_path / "attributes.json", '{"1": [2, 3]}\n'),
        "styles": (read_styles, tmp_path / "styles.csv", STYLES_HEADER + STYLE_ROW),
        "taobao": (lambda p: load_taobao(p.parent), tmp_path / "taobao" / "buy.train.txt", "uid\tsid\n0\t1\n1\t0\n"),
    }


READERS = list(readers(Path(".")))


def reader(name: str, tmp_path: Path):
    read, path, good = readers(tmp_path)[name]
    if name == "taobao":
        taobao_dir(path.parent)
    return read, path, good


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize(("encode", "expected"), [
    (lambda text: text.replace("\n", " é\n", 1).encode("latin-1"), ":1: not UTF-8 text (byte 0xe9 at offset "),
    (lambda text: text.encode("utf-16"), ": UTF-16 text; ecomjax reads UTF-8"),
    (lambda text: text.encode("utf-16-le"), ":1: binary file, not UTF-8 text (NUL byte at offset 1)"),
    (lambda text: text.encode()[:3] + b"\x00" + text.encode()[3:], ":1: binary file, not UTF-8 text (NUL byte at offset 3)"),
    (lambda text: b"\x89PNG\r\n\x1a\n" + bytes(range(256)), ":3: binary file, not UTF-8 text (NUL byte at offset 8)"),
    (lambda text: text.encode() + b"\xff\xfe", ":{last}: not UTF-8 text (byte 0xff at offset {size})"),
], ids=["latin-1", "utf-16", "utf-16-no-bom", "nul", "png", "trailing-garbage"])
def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path, name, encode, expected):
    read, path, good = reader(name, tmp_path)
    write(path, encode(good))
    expected = expected.format(last=good.count("\n") + 1, size=len(good.encode()))
    message = data_error(read, path)
    assert message.startswith(f"{path}{expected}"), message


@pytest.mark.parametrize("name", READERS)
def test_a_byte_order_mark_is_allowed_and_dropped(tmp_path, name):
    read, path, good = reader(name, tmp_path)
    write(path, good)
    plain = read(path)
    write(path, "\ufeff" + good)
    with_bom = read(path)
    assert repr(plain) == repr(with_bom)  # the BOM is not part of the first header or id


@pytest.mark.parametrize("name", READERS)
def test_an_empty_file_is_an_error_naming_the_file(tmp_path, name):
    read, path, _ = reader(name, tmp_path)
    write(path, "")
    assert str(path) in data_error(read, path)


def test_blank_sequence_files_and_empty_sequence_lists_name_their_source(tmp_path):
    path = write(tmp_path / "seq.txt", "\n \n\t\n")
    assert data_error(read_sequence_file, path) == f"{path}: no sequences found"
    assert data_error(from_lists, [], 3, "shop") == "shop: no sequences"
    assert data_error(from_lists, [[1], []], 3, "shop") == "shop: user 1 has an empty sequence"


# --- strict numbers ----------------------------------------------------------------------------

STRANGE_IDS = ["1_0", "٣", "+6", "--6", "6²", "²", "0x1f", "1.0", "1e3", "٣٣", "６", "⁶", "-0", "-", "7a"]


@pytest.mark.parametrize("token", STRANGE_IDS)
def test_sequence_ids_are_ascii_digits_only(tmp_path, token):
    path = write(tmp_path / "seq.txt", f"1 2 3\n2 4 {token} 5\n")
    message = data_error(read_sequence_file, path)  # '--6' and '6²' used to escape as StopIteration
    assert message.startswith(f"{path}:2: "), message
    assert repr(token) in message or f"negative id {token}" in message


def test_sequence_ids_beyond_int64_name_the_line_and_the_range(tmp_path):
    path = write(tmp_path / "seq.txt", f"1 2 3\n2 {INT64_MAX} 99999999999999999999\n")
    assert data_error(read_sequence_file, path) == (
        f"{path}:2: id 99999999999999999999 is out of range; allowed: 0..{INT64_MAX}")
    dataset = read_sequence_file(write(tmp_path / "seq.txt", f"{INT64_MAX} 2 {INT64_MAX}\n"))
    assert dataset.item_ids[1:].tolist() == [2, INT64_MAX] and dataset.user_ids.tolist() == [INT64_MAX]


def test_negative_sequence_ids_keep_their_message(tmp_path):
    path = write(tmp_path / "seq.txt", "1 2 -3\n")
    assert data_error(read_sequence_file, path) == f"{path}:1: negative id -3"


@pytest.mark.parametrize("token", [*STRANGE_IDS, str(2**31), "99999999999999999999", " 7", ""])
def test_taobao_ids_are_ascii_digits_within_int32(tmp_path, token):
    root = taobao_dir(tmp_path / "taobao", train=f"0\t1\n1\t{token}\n")
    message = data_error(load_taobao, root)
    assert message.startswith(f"{root / 'buy.train.txt'}:3: sid "), message
    if token.isascii() and token.isdigit():
        assert f"out of range; allowed: 0..{INT32_MAX}" in message


@pytest.mark.parametrize("token", [*STRANGE_IDS, "99999999999999999999"])
def test_item_title_and_attribute_ids_are_ascii_digits(tmp_path, token):
    titles = write(tmp_path / "titles.tsv", TITLES_HEADER + f"1\tA\tSerum\n{token}\tB\tLipstick\n")
    assert data_error(read_item_titles, titles).startswith(f"{titles}:3: item id ")
    attributes = write(tmp_path / "attributes.json", json.dumps({"1": [2], token: [3]}))
    assert data_error(read_item_attributes, attributes).startswith(f"{attributes}: item id ")


@pytest.mark.parametrize(("column", "value"), [("id", "٣"), ("id", "1_0"), ("id", "99999999999999999999"),
                                               ("year", "٢٠١١"), ("year", "+2011"), ("year", "20111")])
def test_fashion_ids_and_years_are_ascii_digits_in_range(tmp_path, column, value):
    cells = STYLE_ROW.rstrip("\n").split(",")
    cells[STYLE_COLUMNS.index(column)] = value
    path = write(tmp_path / "styles.csv", STYLES_HEADER + ",".join(cells) + "\n")
    assert data_error(read_styles, path).startswith(f"{path}:2: {column} ")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "٣", "1_0", "1e39", "0x10", " 1 2"])
def test_ctr_numbers_are_finite_ascii_decimals_named_by_line(tmp_path, value):
    path = write(tmp_path / "ctr.csv", CTR_HEADER + "1,0,5,0.5,a\n\n" + f"0,0,6,{value},b\n")
    assert data_error(read_ctr_files, "ali_ccp", path, {}).startswith(f"{path}:4: numeric field 'D1'")


@pytest.mark.parametrize("value", ["٢", "nan", "inf", "2_0", "0x2"])
def test_relevance_grades_are_ascii_decimals(tmp_path, value):
    path = write(tmp_path / "rel.csv", RELEVANCE_HEADER + f"1,7,Drill,drill,{value}\n")
    assert data_error(read_relevance, path).startswith(f"{path}:2: relevance ")


# --- groups, titles, splits --------------------------------------------------------------------


@pytest.mark.parametrize("user", ["", "  "])
def test_an_empty_ctr_user_id_names_the_file_and_line(tmp_path, user):
    path = write(tmp_path / "ctr.csv", CTR_HEADER + f"1,0,5,0.5,a\n\n0,0,{user},0.1,b\n")
    assert data_error(read_ctr_files, "ali_ccp", path, {}).startswith(f"{path}:4: empty '101'")


def test_an_empty_ctr_request_id_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "mtl.csv", "search_id,categorical_1,numerical_1,click,conversion\n"
                                       "3,7,0.5,1,0\n,7,0.1,0,0\n")
    assert data_error(read_ctr_files, "aliexpress", path, {}).startswith(f"{path}:3: empty 'search_id'")


def test_ctr_errors_name_the_real_line_after_blank_lines(tmp_path):
    path = write(tmp_path / "ctr.csv", CTR_HEADER + "\n1,0,5,0.5,a\n\n\n0,1,6,0.1,b\n")
    assert data_error(read_ctr_files, "ali_ccp", path, {}).startswith(f"{path}:6: purchase=1 with click=0")
    path = write(tmp_path / "ctr.csv", CTR_HEADER + "\n\n2,0,5,0.5,a\n")
    assert data_error(read_ctr_files, "ali_ccp", path, {}).startswith(f"{path}:4: label 'click'")


def test_a_repeated_ctr_column_is_an_error(tmp_path):
    path = write(tmp_path / "ctr.csv", "click,purchase,101,D1,D1\n1,0,5,0.5,0.1\n")
    assert data_error(read_ctr_files, "ali_ccp", path, {}) == (
        f"{path}:1: column(s) ['D1'] appear more than once in the header")


def test_one_item_id_with_two_titles_names_both_lines(tmp_path):
    path = write(tmp_path / "titles.tsv", TITLES_HEADER + "1\tA\tSerum\n2\tB\tGloss\n\n1\tC\tLipstick\n")
    assert data_error(read_item_titles, path).startswith(f"{path}:5: item id 1 appears twice (first on line 2)")
    path = write(tmp_path / "styles.csv", STYLES_HEADER + STYLE_ROW + STYLE_ROW.replace("Turtle", "Other"))
    assert data_error(read_styles, path) == f"{path}:3: id 15970 already appeared on line 2"
    path = write(tmp_path / "attributes.json", '{"1": [2], "3": [], "1": [4]}')
    assert data_error(read_item_attributes, path) == f"{path}: key '1' appears twice in one object"


def test_one_relevance_product_with_two_titles_is_reported_with_both_lines(tmp_path):
    # Home Depot's own train.csv has such products; each judged row keeps its title, catalogue()
    # the first, and the conflict is listed rather than resolved silently
    path = write(tmp_path / "rel.csv", RELEVANCE_HEADER + "1,7,Drill,drill,2\n2,8,Saw,saw,3\n\n"
                                                          "3,7,Cordless Drill,drill,2.5\n4,7,Drill 2,q,1\n")
    data = read_relevance(path)
    assert data.title_conflicts == {"7": (2, 5)}
    assert data.titles.tolist() == ["Drill", "Saw", "Cordless Drill", "Drill 2"]
    assert data.catalogue()[1].tolist() == ["Drill", "Saw"]
    assert data.subset(np.array([0])).title_conflicts == {"7": (2, 5)}


def test_sequences_too_short_for_leave_one_out_name_the_file_counts_and_minimum(tmp_path):
    path = write(tmp_path / "seq.txt", "1 2 3\n2 3 4\n3 5\n")
    message = data_error(leave_one_out, read_sequence_file(path))
    assert message == (f"{path}: all 3 users have fewer than 3 items (2 with 2, 1 with 1); leave-one-out "
                       "needs at least 3 items for a user to give training, validation and test data")
    assert leave_one_out(read_sequence_file(write(path, "1 2 3\n2 3 4 5\n"))).num_train_only == 1


# --- files a CSV parser or a container reader chokes on ----------------------------------------


@pytest.mark.parametrize("name", ["ctr", "relevance", "titles", "styles"])
def test_a_field_beyond_the_csv_limit_is_an_error_naming_the_file(tmp_path, name):
    read, path, good = reader(name, tmp_path)
    separator = "\t" if name == "titles" else ","
    write(path, good + '"' + "x" * 200_000 + separator + "y\n")
    assert data_error(read, path).startswith(f"{path}:")


def test_parquet_and_zip_that_are_not_name_the_file(tmp_path):
    path = write(tmp_path / "rel.parquet", b"PAR1 not a parquet file")
    assert data_error(read_relevance, path).startswith(f"{path}: not a readable Parquet file")
    write(tmp_path / "styles.csv", STYLES_HEADER + STYLE_ROW)
    write(tmp_path / "images-128.zip", b"PK\x03\x04 truncated")
    assert data_error(read_fashion_catalog, tmp_path).startswith(f"{tmp_path / 'images-128.zip'}: not a readable zip")


def test_deeply_nested_attribute_json_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path / "attributes.json", "[" * 100_000)
    assert data_error(read_item_attributes, path) == f"{path}: JSON nested too deeply"


def test_an_unknown_ctr_format_is_an_input_error():
    from ecomjax.errors import InputError

    with pytest.raises(InputError, match="CTR file format 'csv' is unknown; formats: "):
        read_ctr_files("csv", Path("x.csv"), {})


# --- generated files ---------------------------------------------------------------------------

GOOD_IDS = [str(i) for i in range(12)] + [str(INT32_MAX), str(INT64_MAX)]
BAD_TOKENS = [*STRANGE_IDS, "", " ", "-1", "99999999999999999999", str(2**31), "é", "\x00", '"', "'", ",", "\t",
              "\r", "\x0b", "\x1c", "\u2028", "\x85", "nan", "inf", "1e39", "\ufeff", "é" * 3, "a,b", '"x"']
line_ends = st.sampled_from(["\n"] * 12 + ["\r\n", "\r\n", "\r", ""])
encodings = st.sampled_from(["utf-8"] * 12 + ["utf-8-sig", "latin-1", "utf-16", "cp1252"])


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


def corrupted(fields: list[str], damage) -> list[str]:
    """``fields`` with one replaced by a bad token, one dropped or one added (``damage``), or as is."""
    if damage is None:
        return fields
    if damage == "drop":
        return fields[:-1]
    if damage == "extra":
        return [*fields, "1"]
    index, token = damage
    return [token if i == index % len(fields) else f for i, f in enumerate(fields)]


damages = st.one_of(st.just("drop"), st.just("extra"), st.tuples(st.integers(0, 20), st.sampled_from(BAD_TOKENS)))
file_damages = st.one_of(*[st.none()] * 3, st.lists(st.tuples(st.integers(0, 5), damages), min_size=1, max_size=2))


def damaged_rows(rows: list[list[str]], damage) -> list[list[str]]:
    """``rows`` with ``damage`` (None, or ``[(row index, damage)]``) done to some of them."""
    rows = list(rows)
    for index, what in damage or []:
        if rows:
            rows[index % len(rows)] = corrupted(rows[index % len(rows)], what)
    return rows


def delimited(separator: str, header: str, fields: list):
    """A file's bytes: ``header`` and rows of well-formed ``fields`` (strategies), in half of the
    files one or two fields damaged; in another encoding now and then; or random bytes."""
    rows = st.tuples(st.lists(st.tuples(*fields).map(list), max_size=6), file_damages).map(lambda t: damaged_rows(*t))
    body = st.tuples(rows, st.lists(line_ends, min_size=6, max_size=6)).map(
        lambda t: "".join(separator.join(r) + e for r, e in zip(t[0], t[1], strict=False)))
    return st.one_of(
        *[st.tuples(body, encodings).map(lambda b: encoded(header + b[0], b[1]))] * 4,
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: header.encode() + b),
    )


small_ids = st.sampled_from(GOOD_IDS)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def strict_text(content: bytes) -> str | None:
    """The text a strict UTF-8 reader sees, or None for a file that is not UTF-8 text."""
    if content[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in content:
        return None
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def expect_error_naming(read, path: Path, *args):
    """``read`` fails with a one-line ``DataFormatError`` naming ``path`` (anything else fails the test)."""
    message = data_error(read, *args)
    assert str(path) in message, message


def text_lines(text: str) -> list[str]:
    """Lines as ``open()`` splits them (universal newlines: \\n, \\r\\n, \\r; not \\x0b or \\u2028)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def sequence_oracle(text: str | None) -> list[tuple[int, list[int]]] | None:
    """``[(user, [item ids])]`` of a well-formed ``user item item ...`` file, else None."""
    if text is None:
        return None
    rows, users = [], set()
    for line in text_lines(text):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not all(f.isascii() and f.isdigit() and int(f) <= INT64_MAX for f in fields):
            return None
        ids = [int(f) for f in fields]
        if ids[0] in users:
            return None
        users.add(ids[0])
        rows.append((ids[0], ids[1:]))
    return rows or None


sequence_rows = st.tuples(st.lists(st.lists(small_ids, min_size=1, max_size=5), max_size=6).map(
    lambda rows: [[str(user), *items] for user, items in enumerate(rows)]), file_damages).map(lambda t: damaged_rows(*t))
sequence_lines = st.tuples(sequence_rows, st.lists(st.tuples(st.sampled_from([" ", " ", "  ", "\t"]), line_ends),
                                                   min_size=6, max_size=6)).map(
    lambda t: [(r, s, e) for r, (s, e) in zip(t[0], t[1], strict=False)])
sequence_files = st.one_of(
    *[st.tuples(sequence_lines, encodings).map(lambda t: encoded("".join(s.join(ts) + e for ts, s, e in t[0]), t[1]))] * 4,
    st.binary(max_size=64),
)


@FUZZ
@given(sequence_files)
def test_generated_sequence_files_read_as_a_strict_parser_reads_them(fuzz_dir, content):
    path = write(fuzz_dir / "seq.txt", content)
    expected = sequence_oracle(strict_text(content))
    event("parsed" if expected else "rejected")
    if expected is None:
        expect_error_naming(read_sequence_file, path, path)
        return
    dataset = read_sequence_file(path)
    assert dataset.user_ids.tolist() == [user for user, _ in expected]
    assert [dataset.item_ids[dataset.sequence(u)].tolist() for u in range(dataset.num_users)] == [
        items for _, items in expected]
    try:
        split = leave_one_out(dataset)
    except DataFormatError as error:
        assert max(len(items) for _, items in expected) < 3 and str(path) in str(error)
    else:
        assert split.num_train_only == sum(len(items) < 3 for _, items in expected)


@FUZZ
@given(delimited("\t", "uid\tsid\n", [small_ids, small_ids]))
def test_generated_taobao_files_read_as_a_strict_parser_reads_them(fuzz_dir, content):
    root = taobao_dir(fuzz_dir / "taobao", train=content)
    path = root / "buy.train.txt"
    text = strict_text(content)
    pairs = None
    if text is not None:
        lines = text_lines(text)
        pairs = [] if lines[0] == "uid\tsid" else None
        for line in lines[1:] if pairs is not None else []:
            fields = line.split("\t")
            if line and (len(fields) != 2 or not all(f.isascii() and f.isdigit() and int(f) <= INT32_MAX
                                                     for f in fields)):
                pairs = None
                break
            if line:
                pairs.append((int(fields[0]), int(fields[1])))
    event("parsed" if pairs else "rejected")
    if not pairs:
        expect_error_naming(load_taobao, path, root)
        return
    data = load_taobao(root)
    got = set(zip(data.train["buy"].users.tolist(), data.train["buy"].items.tolist(), strict=True))
    assert got == set(pairs) and data.duplicates["buy.train.txt"] == len(pairs) - len(set(pairs))


@FUZZ
@given(delimited(",", CTR_HEADER, [st.sampled_from(["0", "1", "1", "0.0"]), st.sampled_from(["0", "0", "0.0"]),
                                   st.sampled_from(["1", "2", "u3", "4"]), st.sampled_from(["0.5", "-1", "", "2e-3", "7"]),
                                   st.sampled_from(["a", "b", "", "é"])]))
def test_generated_ctr_files_read_or_name_the_file(fuzz_dir, content):
    path = write(fuzz_dir / "ctr.csv", content)
    try:
        data, splits = read_ctr_files("ali_ccp", path, {})
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error
        event("rejected")
        return
    event("parsed")
    assert set(np.unique(data.click)) <= {0.0, 1.0} and np.isfinite(data.numeric).all()
    assert not ((data.purchase > 0) & (data.click == 0)).any() and (data.users >= 0).all()
    rows = [r for r in csv.reader(io.StringIO(strict_text(content), newline=""))][1:]
    rows = [r for r in rows if r]
    assert len(splits["train"]) == len(data) == len(rows)
    assert all(r[2].strip() and (not r[3].strip() or DECIMAL.fullmatch(r[3].strip())) for r in rows)


@FUZZ
@given(delimited(",", RELEVANCE_HEADER, [small_ids, st.sampled_from(["p1", "p2", "100001"]),
                                         st.sampled_from(["Drill", "Saw", "Cordless Drill", '"Angle, 12 in."']),
                                         st.sampled_from(["drill", "saw", "l bracket"]),
                                         st.sampled_from(["1", "2", "2.5", "3", "1.67"])]))
def test_generated_relevance_files_read_or_name_the_file(fuzz_dir, content):
    path = write(fuzz_dir / "rel.csv", content)
    try:
        data = read_relevance(path)
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error
        event("rejected")
        return
    event("parsed")
    assert len(data) and ((data.relevance >= 1) & (data.relevance <= 3)).all()
    assert all(q and p and t for q, p, t in zip(data.queries, data.product_ids, data.titles, strict=True))
    titles: dict[str, set[str]] = {}
    for product, title in zip(data.product_ids, data.titles, strict=True):
        titles.setdefault(product, set()).add(title)
    assert set(data.title_conflicts) == {p for p, ts in titles.items() if len(ts) > 1}


@FUZZ
@given(delimited("\t", TITLES_HEADER, [st.integers(0, 10**6).map(str), st.sampled_from(["A1", "B2"]),
                                        st.sampled_from(["Rose Serum", "Matte Lipstick", "Gloss"])]))
def test_generated_title_files_read_or_name_the_file(fuzz_dir, content):
    path = write(fuzz_dir / "titles.tsv", content)
    try:
        titles = read_item_titles(path)
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error
        event("rejected")
        return
    event("parsed")
    assert titles and all(isinstance(i, int) and 0 <= i <= INT64_MAX and t for i, t in titles.items())
    rows = list(csv.reader(io.StringIO(strict_text(content), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert sorted(titles) == sorted(int(r[0]) for r in rows[1:] if r)
    assert all(r[0].isascii() and r[0].isdigit() for r in rows[1:] if r)


@FUZZ
@given(delimited(",", STYLES_HEADER, [st.integers(0, 10**6).map(str), st.sampled_from(["Men", "Women"]),
                                       *[st.just(c) for c in STYLE_ROW.split(",")[2:7]],
                                       st.sampled_from(["2011", "", "NA"]), st.sampled_from(["Casual", "NA"]),
                                       st.sampled_from(["Turtle Check Men Shirt", '"Shirt, Blue"'])]))
def test_generated_style_files_read_or_name_the_file(fuzz_dir, content):
    path = write(fuzz_dir / "styles.csv", content)
    try:
        products = read_styles(path)
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error
        event("rejected")
        return
    event("parsed")
    ids = [p.id for p in products]
    assert len(set(ids)) == len(ids) and all(0 <= i <= INT64_MAX for i in ids)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64), st.floats(), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(BAD_TOKENS + GOOD_IDS),
                                                                         inner, max_size=3)),
    max_leaves=8,
)


attribute_maps = st.dictionaries(st.integers(0, 10**6).map(str), st.lists(st.integers(0, 50), max_size=4),
                                 min_size=1, max_size=4)


@FUZZ
@given(st.one_of(json_values.map(json.dumps).map(str.encode), st.binary(max_size=64),
                 *[attribute_maps.map(json.dumps).map(str.encode)] * 2,
                 st.tuples(json_values.map(json.dumps), encodings).map(lambda t: encoded(t[0], t[1]))))
def test_generated_attribute_files_read_or_name_the_file(fuzz_dir, content):
    path = write(fuzz_dir / "attributes.json", content)
    try:
        attributes = read_item_attributes(path)
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error
        event("rejected")
        return
    event("parsed")
    assert attributes and all(isinstance(i, int) and i >= 0 for i in attributes)
    assert all(isinstance(a, int) and a >= 0 for values in attributes.values() for a in values)


@FUZZ
@given(st.sampled_from(READERS), st.binary(max_size=96))
def test_random_bytes_never_escape_as_another_exception(fuzz_dir, name, content):
    read, path, _ = reader(name, fuzz_dir / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, content)
    try:
        read(path)
    except DataFormatError as error:
        assert str(path) in str(error) and "\n" not in str(error), error


def test_the_fuzzed_zip_reader_is_exercised_too(tmp_path):
    write(tmp_path / "styles.csv", STYLES_HEADER + STYLE_ROW)
    with zipfile.ZipFile(tmp_path / "images-128.zip", "w") as archive:
        archive.writestr("15970.jpg", b"")
    assert len(read_fashion_catalog(tmp_path)) == 1
