"""Fashion Product Images: reader, colour-free titles, vocabularies, split and attribute queries.

Runs on the shared catalogue ($ECOMJAX_DATA_DIR/fashion-products; under CI a missing file
fails). Malformed-file tests write a temporary copy of a few rows; the repository holds no data.
The hand-written titles and products below are made up in the catalogue's style.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from ecomjax.data import DataFormatError
from ecomjax.data.fashion import (
    COLUMNS,
    MISSING,
    OTHER,
    Product,
    clean_title,
    colour_pattern,
    read_fashion_catalog,
    read_styles,
)
from ecomjax.data.fashion_queries import compose_queries, render_query
from ecomjax.data.fashion_splits import build_vocabularies, split_products

NUM_PRODUCTS = 9583


@pytest.fixture(scope="module")
def root() -> Path:
    styles = real_data("fashion-products/styles.csv")
    real_data("fashion-products/images-128.zip")
    return styles.parent


@pytest.fixture(scope="module")
def catalog(root):
    catalog = read_fashion_catalog(root, image_cache_size=4)
    yield catalog
    catalog.close()


@pytest.fixture(scope="module")
def split(catalog):
    return split_products(catalog.products, seed=0)


# ---------------------------------------------------------------------------- reading
def test_reads_every_product_with_its_image(catalog):
    assert len(catalog) == NUM_PRODUCTS and catalog.missing_images == ()
    assert len(set(catalog.ids.tolist())) == NUM_PRODUCTS
    assert len({p.article_type for p in catalog.products}) == 75
    assert {p.gender for p in catalog.products} == {"Men", "Women", "Unisex", "Boys", "Girls"}
    assert {p.season for p in catalog.products} == {"Fall", "Winter", "Summer", "Spring"}
    assert len(catalog.colours()) == 43  # 44 values in the file, "NA" is a missing colour
    assert sum(p.base_colour is None for p in catalog.products) == 3
    assert sum(p.usage is None for p in catalog.products) == 8


def test_images_decode_on_demand_through_a_bounded_cache(catalog):
    ids = catalog.ids[:6]
    images = catalog.images(ids)
    assert images.shape == (6, 128, 128, 3) and images.dtype == np.uint8
    assert images.std() > 10  # photos, not blank
    assert len(catalog._cache) == 4 and catalog.image(int(ids[-1])) is catalog._cache[int(ids[-1])]
    with pytest.raises(KeyError, match="not in the catalogue"):
        catalog.image(-5)


def test_data_dir_comes_from_the_environment(root, monkeypatch):
    monkeypatch.setenv("ECOMJAX_DATA_DIR", str(root.parent))
    assert len(read_fashion_catalog()) == NUM_PRODUCTS
    monkeypatch.setenv("ECOMJAX_DATA_DIR", str(root.parent / "nowhere"))
    with pytest.raises(FileNotFoundError, match="directory 'fashion-products' not found as given or under"):
        read_fashion_catalog()


def copy_rows(root: Path, tmp_path: Path, count: int = 4) -> list[str]:
    lines = (root / "styles.csv").read_text(encoding="utf-8").splitlines()[: count + 1]
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def write_rows(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def with_field(line: str, column: str, value: str) -> str:
    cells = line.split(",")
    cells[COLUMNS.index(column)] = value
    return ",".join(cells)


def test_malformed_rows_name_file_and_line(root, tmp_path):
    lines = copy_rows(root, tmp_path)
    assert len(read_styles(tmp_path / "styles.csv")) == 4
    head, first, second, third = lines[0], lines[1], lines[2], lines[3]
    cases = [
        ([head, first, second + ",extra", third], r"styles\.csv:3: expected 10 fields, got 11"),
        ([head, first, second, with_field(third, "articleType", "")],
         r"styles\.csv:4: missing articleType"),
        ([head, first, with_field(second, "productDisplayName", " ")],
         r"styles\.csv:3: missing productDisplayName"),
        ([head, first, with_field(second, "id", "12a")], r"styles\.csv:3: id '12a' is not"),
        ([*lines, first], r"styles\.csv:6: id \d+ already appeared on line 2"),
        ([head, first, with_field(second, "year", "20x1")], r"styles\.csv:3: year '20x1'"),
        (["id,gender,colour", *lines[1:]], r"styles\.csv:1: header must be"),
        ([head], r"no products found"),
    ]
    for rows, message in cases:
        with pytest.raises(DataFormatError, match=message):
            read_styles(write_rows(tmp_path, rows))
    # NA and blank optional fields are missing values, blank lines are skipped
    relaxed = [lines[0], with_field(with_field(lines[1], "baseColour", "NA"), "year", ""), ""]
    (product,) = read_styles(write_rows(tmp_path, relaxed))
    assert product.base_colour is None and product.year is None


def test_a_missing_image_is_reported_not_dropped(root, tmp_path):
    lines = copy_rows(root, tmp_path, count=3)
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    with zipfile.ZipFile(root / "images-128.zip") as real, \
            zipfile.ZipFile(tmp_path / "images-128.zip", "w") as partial:
        for product_id in ids[:2]:
            partial.writestr(f"{product_id}.jpg", real.read(f"{product_id}.jpg"))
    with pytest.raises(DataFormatError, match=rf"no image for 1 products .*\[{ids[2]}\]"):
        read_fashion_catalog(tmp_path)
    catalog = read_fashion_catalog(tmp_path, missing_images="report")
    assert catalog.missing_images == (ids[2],) and catalog.ids.tolist() == ids[:2]
    with pytest.raises(KeyError, match="its image is missing"):
        catalog.image(ids[2])
    assert catalog.image(ids[0]).shape == (128, 128, 3)
    catalog.close()


# ---------------------------------------------------------------------------- titles
COLOURS = ("Navy Blue", "Blue", "Off White", "White", "Grey", "Grey Melange", "Tan", "Red")


@pytest.mark.parametrize(
    ("title", "own", "expected"),
    [
        ("Acme Men Navy Blue Slim Shirt", "Navy Blue", "Acme Men Slim Shirt"),
        ("Acme Women Off-White & Blue Striped Top", "Off White", "Acme Women Striped Top"),
        ("Acme Men Grey Melange Hoodie", "Grey Melange", "Acme Men Hoodie"),
        ("ACME MEN NAVY BLUE TEE", "Blue", "ACME MEN TEE"),  # case-insensitive, other colours too
        ("Tantra Men Tan Belt", "Tan", "Tantra Men Belt"),  # whole words only
        ("Redwood Unisex Red Cap", "Red", "Redwood Unisex Cap"),
        ("Acme Girls Chartreuse Frock", "Chartreuse", "Acme Girls Frock"),  # own colour, unlisted
        ("Acme Men Navy Polo", "Blue", "Acme Men Polo"),  # short forms of vocabulary colours
    ],
)
def test_clean_title_removes_colour_words(title, own, expected):
    assert clean_title(title, own, COLOURS) == expected


def test_no_catalogue_title_keeps_a_colour_word(catalog):
    titles = catalog.clean_titles()
    pattern = colour_pattern(catalog.colours())
    assert not [t for t in titles if pattern.search(t)]
    navy = [t for t, p in zip(titles, catalog.products, strict=True)
            if p.base_colour == "Navy Blue"]
    assert len(navy) > 400 and not any(re.search(r"\b(navy|blue)\b", t, re.I) for t in navy)
    assert all(titles)  # something is left of every title


# ---------------------------------------------------------------------------- vocabularies
def test_vocabularies_merge_rare_classes_into_other(catalog, split):
    train = catalog.subset(split.train)
    vocabularies = build_vocabularies(train, min_count=20)
    counts = {name: Counter(getattr(p, name) for p in train) for name in vocabularies}
    for name, vocab in vocabularies.items():
        assert vocab.classes[-1] == OTHER and len(set(vocab.classes)) == len(vocab.classes)
        assert all(counts[name][c] >= 20 for c in vocab.classes[:-1])
        assert all(n < 20 for n in vocab.merged.values())
        kept = sum(counts[name][c] for c in vocab.classes[:-1])
        assert kept + sum(vocab.merged.values()) == sum(n for v, n in counts[name].items() if v)
    article = vocabularies["article_type"]
    assert article.classes[0] == "Tshirts" and 30 <= len(article.classes) <= 45
    assert vocabularies["gender"].classes[:2] == ("Men", "Women")
    assert "Smart Casual" in vocabularies["usage"].merged
    assert article.index("Footballs") == len(article.classes) - 1  # rare or unseen -> other
    assert vocabularies["base_colour"].index(None) == MISSING
    labels = article.encode(catalog.products)
    assert labels.shape == (NUM_PRODUCTS,) and labels.min() >= 0


# ---------------------------------------------------------------------------- split
def test_split_is_disjoint_complete_and_deterministic(catalog, split):
    parts = [set(split.train.tolist()), set(split.valid.tolist()), set(split.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(catalog.ids.tolist())
    for ids, fraction in zip((split.train, split.valid, split.test), (0.8, 0.1, 0.1), strict=True):
        assert abs(len(ids) / NUM_PRODUCTS - fraction) < 0.02
    again = split_products(catalog.products, seed=0)
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(split, name), getattr(again, name))
    assert not np.array_equal(split_products(catalog.products, seed=1).test, split.test)
    # a product's part depends on (seed, id) alone: a sub-catalogue keeps it
    subset = split_products(catalog.products[::7], seed=0)
    assert all(split.part_of(int(i)) == "test" for i in subset.test)


def test_stratified_split_keeps_class_proportions(catalog):
    split = split_products(catalog.products, seed=0, stratify_by="article_type")
    test = Counter(catalog.product(int(i)).article_type for i in split.test)
    whole = Counter(p.article_type for p in catalog.products)
    for article, n in whole.items():
        if n >= 50:
            assert abs(test[article] - 0.1 * n) <= 1, article
    assert len(split.train) + len(split.valid) + len(split.test) == NUM_PRODUCTS


# ---------------------------------------------------------------------------- queries
def made_up(pid: int, article: str, colour: str | None, gender: str = "Men",
            usage: str | None = "Casual", season: str | None = "Summer") -> Product:
    return Product(pid, gender, "Apparel", "Topwear", article, colour, season, 2012, usage,
                   f"Acme {gender} {colour} {article}")


def test_relevance_on_a_hand_checked_pool():
    pool = [
        made_up(1, "Tshirts", "Navy Blue"),
        made_up(2, "Tshirts", "Navy Blue"),
        made_up(3, "Tshirts", "Black"),
        made_up(4, "Tshirts", "Navy Blue", gender="Women"),
        made_up(5, "Shirts", "Navy Blue"),
        made_up(6, "Tshirts", "Navy Blue", usage=None),
        made_up(7, "Tshirts", "Navy Blue", gender="Unisex"),
    ]
    queries = compose_queries(pool, num_queries=200, seed=0)
    by_attributes = {frozenset(q.attributes.items()): q for q in queries}
    query = by_attributes[frozenset({("article_type", "Tshirts"), ("gender", "Men"),
                                     ("base_colour", "Navy Blue")})]
    assert query.relevant == (1, 2, 6)  # Unisex does not answer "men's"
    assert query.grades == {1: 2, 2: 2, 6: 2, 3: 1, 4: 1, 7: 1}  # 5 is another article type
    query = by_attributes[frozenset({("article_type", "Tshirts"), ("usage", "Casual"),
                                     ("base_colour", "Navy Blue")})]
    assert query.relevant == (1, 2, 4, 7)  # 6 has no usage: it never matches one
    assert query.grades[6] == 1 and query.grades[3] == 1 and 5 not in query.grades


def test_queries_paraphrase_attributes_instead_of_copying_words():
    attributes = {"article_type": "Tshirts", "gender": "Men", "base_colour": "Navy Blue",
                  "usage": "Casual"}
    texts = {render_query(attributes, np.random.default_rng(seed)) for seed in range(200)}
    joined = " | ".join(texts)
    assert len(texts) > 50
    for phrase in ("for him", "men's", "navy", "tee", "t-shirt", "everyday"):
        assert phrase in joined, phrase
    assert "Tshirts" not in joined and "Navy Blue" not in joined and "Casual" not in joined


def test_test_queries_are_deterministic_correct_and_title_free(catalog, split):
    pool = catalog.subset(split.test)
    queries = compose_queries(pool, num_queries=60, seed=3)
    assert len(queries) == 60
    assert [q.text for q in queries] == [q.text for q in compose_queries(pool, 60, seed=3)]
    assert [q.text for q in queries] != [q.text for q in compose_queries(pool, 60, seed=4)]
    test_ids = set(split.test.tolist())
    titles = [p.title.lower() for p in catalog.products]
    clean = [t.lower() for t in catalog.clean_titles()]
    for query in queries:
        assert query.relevant and set(query.relevant) <= test_ids
        assert 2 <= len(query.attributes) <= 4 and "article_type" in query.attributes
        expected = tuple(sorted(p.id for p in pool if all(
            getattr(p, k) == v for k, v in query.attributes.items())))
        assert query.relevant == expected
        assert all(query.grades[i] == 2 for i in query.relevant)
        assert not any(t in query.text for t in titles + clean)
    assert len({q.text for q in queries}) == 60
    assert len({frozenset(q.attributes.items()) for q in queries}) == 60
