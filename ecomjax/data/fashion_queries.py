"""Attribute queries over the fashion catalogue and their relevance, derived from attributes alone.

A shopper types "navy tee for him"; ``compose_queries`` writes such queries from templates and
synonyms (never from titles, so retrieval is not won by copying words) over a pool of products,
and every grade comes from the attributes: 2 when a product has every attribute the query
names, 1 when it has the article type and misses one other named attribute, 0 otherwise
(``relevance_grades``). Training queries get several wordings (``paraphrased``) and are paired
with a few of their relevant products (``training_pairs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ecomjax.data.fashion import Product
from ecomjax.errors import InputError

# Phrases per attribute value: (before the noun, after the noun). Several per value, so a
# retrieval model must learn that "for him", "men's" and "mens" mean the same thing.
GENDER_PHRASES = {
    "Men": (("men's", "mens", "male"), ("for men", "for him", "for guys")),
    "Women": (("women's", "womens", "ladies'"), ("for women", "for her", "for ladies")),
    "Boys": (("boys'", "kids' boys"), ("for boys", "for a boy")),
    "Girls": (("girls'", "kids' girls"), ("for girls", "for a girl")),
    "Unisex": (("unisex", "gender-neutral"), ("for men and women", "for everyone")),
}
USAGE_PHRASES = {
    "Casual": (("casual", "everyday", "relaxed"), ("for everyday wear", "for daily use")),
    "Formal": (("formal", "office", "business"), ("for work", "for the office")),
    "Sports": (("sports", "athletic", "gym"), ("for workouts", "for the gym", "for training")),
    "Ethnic": (("ethnic", "traditional", "festive"), ("for festivals", "in traditional style")),
    "Smart Casual": (("smart casual", "semi-formal"), ("for smart casual wear",)),
    "Travel": (("travel",), ("for travel", "for trips")),
    "Party": (("party",), ("for parties", "for a night out")),
}
SEASON_PHRASES = {
    "Summer": (("summer", "warm-weather"), ("for summer", "for hot days")),
    "Winter": (("winter", "cold-weather"), ("for winter", "for the cold")),
    "Fall": (("fall", "autumn"), ("for autumn", "for fall")),
    "Spring": (("spring",), ("for spring",)),
}
COLOUR_SYNONYMS = {  # after the noun each becomes "in <colour>"
    "Black": ("black", "jet black"), "Grey": ("grey", "gray"), "Purple": ("purple", "violet"),
    "Navy Blue": ("navy", "navy blue", "dark blue"), "Beige": ("beige", "sand"),
    "Maroon": ("maroon", "wine"), "Olive": ("olive", "olive green"), "Gold": ("gold", "golden"),
    "Tan": ("tan", "camel"), "Charcoal": ("charcoal", "dark grey"),
    "Off White": ("off-white", "ecru"), "Multi": ("multicolour", "multi-coloured", "colourful"),
    "Magenta": ("magenta", "fuchsia"), "Lavender": ("lavender", "lilac"),
    "Coffee Brown": ("coffee", "dark brown"), "Turquoise Blue": ("turquoise", "aqua"),
    "Burgundy": ("burgundy", "oxblood"), "Grey Melange": ("heather grey", "grey melange"),
    "Fluorescent Green": ("neon green",), "Skin": ("skin-tone",),
    "Mustard": ("mustard", "mustard yellow"),
}
ARTICLE_SYNONYMS = {  # the noun; types not listed are named in lower case
    "Tshirts": ("t-shirt", "tee", "tshirt"), "Shirts": ("shirt", "button-down shirt"),
    "Casual Shoes": ("casual shoes", "sneakers"), "Tops": ("top", "blouse"),
    "Kurtas": ("kurta",), "Sports Shoes": ("sports shoes", "trainers", "running shoes"),
    "Watches": ("watch", "wristwatch"), "Handbags": ("handbag", "purse"),
    "Heels": ("heels", "high heels"), "Sunglasses": ("sunglasses", "shades"),
    "Sweaters": ("sweater", "jumper", "pullover"), "Sandals": ("sandals",),
    "Wallets": ("wallet",), "Flip Flops": ("flip-flops", "slippers"),
    "Sweatshirts": ("sweatshirt", "crewneck sweatshirt"), "Belts": ("belt",),
    "Trousers": ("trousers", "pants", "slacks"), "Formal Shoes": ("formal shoes", "dress shoes"),
    "Jeans": ("jeans", "denims"), "Socks": ("socks",), "Jackets": ("jacket",),
    "Flats": ("flats", "ballet flats"), "Backpacks": ("backpack", "school bag"),
    "Briefs": ("briefs", "underwear"), "Shorts": ("shorts",),
    "Innerwear Vests": ("vest", "undershirt"), "Caps": ("cap", "baseball cap"),
    "Track Pants": ("track pants", "joggers"), "Ties": ("tie", "necktie"), "Kurtis": ("kurti",),
    "Dresses": ("dress",), "Skirts": ("skirt",), "Scarves": ("scarf",),
    "Perfume and Body Mist": ("perfume", "body mist"), "Laptop Bag": ("laptop bag",),
}
OPENERS = ("", "", "", "looking for", "show me", "i need", "find", "buy")
QUERY_FIELDS = ("gender", "season", "usage", "base_colour")  # adjective order before the noun


def attribute_phrases(field_name: str, value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(before-noun, after-noun) phrases for one attribute value; unknown values in lower case."""
    if field_name == "base_colour":
        words = COLOUR_SYNONYMS.get(value, (value.lower(),))
        return words, tuple(f"in {w}" for w in words)
    table = {"gender": GENDER_PHRASES, "usage": USAGE_PHRASES, "season": SEASON_PHRASES}[field_name]
    return table.get(value, ((value.lower(),), (f"for {value.lower()}",)))


def render_query(attributes: dict[str, str], rng: np.random.Generator) -> str:
    """Query text for ``attributes`` (``article_type`` required) from random phrase choices.

    At most one attribute goes after the noun ("navy tee for him"), others before it in the
    usual adjective order; an opener ("show me") is added some of the time.
    """
    pre: list[tuple[int, str]] = []
    post: list[str] = []
    named = [f for f in QUERY_FIELDS if f in attributes]
    after = named[rng.integers(len(named))] if named and rng.random() < 0.5 else None
    for order, name in enumerate(named):
        before_forms, after_forms = attribute_phrases(name, attributes[name])
        if name == after:
            post.append(after_forms[rng.integers(len(after_forms))])
        else:
            pre.append((order, before_forms[rng.integers(len(before_forms))]))
    article = attributes["article_type"]
    nouns = ARTICLE_SYNONYMS.get(article, (article.lower(),))
    words = [OPENERS[rng.integers(len(OPENERS))], *(w for _, w in sorted(pre)),
             nouns[rng.integers(len(nouns))], *post]
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class AttributeQuery:
    """A retrieval query and its judged products (ids from the pool it was composed over).

    ``relevant`` (binary relevance) holds every pool product whose attributes equal all of the
    query's (exact values: a Unisex product does not answer a "men's" query). ``grades`` adds
    graded relevance for nDCG: 2 for the relevant products, 1 for near misses, i.e. the same
    article type with exactly one other query attribute different.
    """

    text: str
    attributes: dict[str, str]
    relevant: tuple[int, ...]
    grades: dict[int, int]


def compose_queries(pool: Sequence[Product], num_queries: int, seed: int = 0, *,
                    extra_attributes: tuple[int, int] = (1, 3)) -> list[AttributeQuery]:
    """Up to ``num_queries`` distinct attribute queries over ``pool``, deterministic in ``seed``.

    Pass the test products as ``pool`` so that queries and relevance only involve held-out
    products. Each query starts from a random pool product: its article type plus
    ``extra_attributes`` (inclusive range) of its known gender/season/usage/colour; so every
    query has at least one relevant product. Combinations already drawn are skipped; a pool with
    fewer distinct combinations yields fewer queries.
    """
    products = sorted(pool, key=lambda p: p.id)
    if not products:
        raise InputError("compose_queries: empty pool")
    ids = np.array([p.id for p in products], dtype=np.int64)
    columns = {name: np.array([getattr(p, name) for p in products], dtype=object)
               for name in ("article_type", *QUERY_FIELDS)}
    rng = np.random.default_rng(seed)
    queries: list[AttributeQuery] = []
    seen: set[frozenset] = set()
    for _ in range(50 * num_queries):
        if len(queries) == num_queries:
            break
        anchor = products[rng.integers(len(products))]
        known = [f for f in QUERY_FIELDS if getattr(anchor, f) is not None]
        low, high = min(extra_attributes[0], len(known)), min(extra_attributes[1], len(known))
        chosen = rng.choice(len(known), size=rng.integers(low, high + 1), replace=False)
        attributes = {"article_type": anchor.article_type}
        attributes |= {known[i]: getattr(anchor, known[i]) for i in sorted(chosen)}
        key = frozenset(attributes.items())
        if key in seen:
            continue
        seen.add(key)
        same_type = columns["article_type"] == attributes["article_type"]
        misses = sum((columns[f] != v).astype(int) for f, v in attributes.items()
                     if f != "article_type")
        full, near = same_type & (misses == 0), same_type & (misses == 1)
        grades = {int(i): 2 for i in ids[full]} | {int(i): 1 for i in ids[near]}
        queries.append(AttributeQuery(render_query(attributes, rng), attributes,
                                      tuple(int(i) for i in ids[full]), grades))
    return queries


# ---------------------------------------------------------------------------- codes and grades
CODE_FIELDS = ("article_type", *QUERY_FIELDS)  # article type first: near misses must share it
UNKNOWN, UNSPECIFIED = -1, -2  # product value missing; attribute not named by the query


def attribute_codes(products: Sequence[Product], values: dict[str, dict[str, int]]) -> np.ndarray:
    """``[N, 5]`` integer codes of each product's attributes (``UNKNOWN`` where NA)."""
    return np.array([[UNKNOWN if getattr(p, f) is None else values[f].setdefault(getattr(p, f), len(values[f]))
                      for f in CODE_FIELDS] for p in products], dtype=np.int32).reshape(-1, len(CODE_FIELDS))


def query_codes(queries: Sequence[AttributeQuery], values: dict[str, dict[str, int]]) -> np.ndarray:
    """``[Q, 5]`` codes of the attributes each query names (``UNSPECIFIED`` elsewhere)."""
    return np.array([[values[f].setdefault(q.attributes[f], len(values[f])) if f in q.attributes
                      else UNSPECIFIED for f in CODE_FIELDS] for q in queries],
                    dtype=np.int32).reshape(-1, len(CODE_FIELDS))


def relevance_grades(queries: jax.Array | np.ndarray, products: jax.Array | np.ndarray):
    """``[Q, N]`` grades: 2 = every named attribute matches, 1 = same article type and exactly
    one other named attribute differs, 0 otherwise. Works on numpy and jax arrays alike."""
    xp = jnp if isinstance(queries, jax.Array) else np
    named = queries[:, None, :] != UNSPECIFIED
    differs = named & (queries[:, None, :] != products[None, :, :])
    misses = differs.sum(-1)
    same_type = ~differs[..., 0]
    return xp.where(misses == 0, 2, xp.where(same_type & (misses == 1), 1, 0)).astype(xp.int32)


# ---------------------------------------------------------------------------- training queries
@dataclass
class QuerySet:
    texts: list[str]
    queries: list[AttributeQuery]  # one per text (paraphrases repeat their query)


def paraphrased(queries: Sequence[AttributeQuery], renderings: int, seed: int) -> QuerySet:
    """Each query plus ``renderings - 1`` more random wordings of the same attributes."""
    rng = np.random.default_rng(seed)
    texts, owners = [], []
    for query in queries:
        wordings = {query.text}
        for _ in range(4 * renderings):
            if len(wordings) == renderings:
                break
            wordings.add(render_query(query.attributes, rng))
        for text in sorted(wordings):
            texts.append(text)
            owners.append(query)
    return QuerySet(texts, owners)


def training_pairs(codes_q: np.ndarray, codes_p: np.ndarray, product_rows: np.ndarray,
                   per_query: int, seed: int) -> np.ndarray:
    """``[P, 2]`` (query row, product row) pairs: up to ``per_query`` relevant products each."""
    rng = np.random.default_rng(seed)
    grades = relevance_grades(codes_q, codes_p[product_rows])
    pairs = []
    for q in range(len(codes_q)):
        relevant = product_rows[grades[q] == 2]
        if len(relevant) == 0:
            raise InputError(f"training query {q} has no relevant training product")
        chosen = rng.choice(relevant, size=min(per_query, len(relevant)), replace=False)
        pairs.extend((q, int(p)) for p in chosen)
    return np.array(pairs, dtype=np.int32)
