"""A synthetic shop: the default dataset, needing no files and no downloads.

It is built as a small generative world rather than random ids, so that models have something
real to learn and later tasks can ask it for more than purchase sequences:

* a catalogue of items, each in one category, with a brand, a colour, a price and a latent
  content vector near its category's centre; popularity inside a category follows a Zipf law;
* shoppers with a Dirichlet taste over categories (a few favourite categories each);
* time-ordered purchase histories: the next category is, with probability
  ``sequential_strength``, one of the two categories that "go with" the previous purchase (a
  phone, then a case), otherwise drawn from the shopper's taste; the item inside the category
  is drawn by popularity, never repeating a purchase.

The item attributes give every product a title (``Catalogue.title``) and a content vector for
text/image features later; impressions with click / purchase / dwell time can be drawn from
the same tastes and attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ecomjax.config import AT_LEAST_1, FRACTION, POSITIVE, Check
from ecomjax.data.sequences import SequenceDataset, from_lists

_CATEGORY_NOUNS = (
    "sneakers", "lipstick", "headphones", "backpack", "sunglasses", "moisturiser", "smartwatch",
    "jacket", "blender", "yoga mat", "phone case", "perfume", "desk lamp", "water bottle",
    "shampoo", "wallet", "kettle", "hoodie", "nail polish", "charger", "mascara", "sandals",
    "notebook", "coffee grinder", "scarf", "face serum", "keyboard", "tote bag", "candle", "jeans",
)
_BRANDS = ("Aurora", "Brindle", "Cobalt", "Dune", "Ember", "Fjord", "Grove", "Halo", "Iris", "Juniper")
_COLOURS = ("black", "white", "red", "blue", "green", "beige", "pink", "grey", "navy", "gold")
_STYLES = ("classic", "slim", "premium", "everyday", "travel", "sport", "organic", "compact")


@dataclass
class SyntheticConfig:
    """The built-in synthetic shop (see ``ecomjax.data.synthetic``)."""

    num_users: int = 2000  # shoppers, each with a latent taste vector
    num_items: int = 1000  # catalogue size
    num_categories: int = 20  # items belong to one category each; tastes are over categories
    mean_length: float = 12.0  # mean purchases per user (geometric tail, at least min_length)
    min_length: int = 5  # like the 5-core filtering of the Amazon files
    popularity_skew: float = 1.0  # Zipf exponent of item popularity inside a category
    taste_concentration: float = 0.3  # Dirichlet concentration: small = users love few categories
    sequential_strength: float = 0.6  # probability the next purchase follows the previous item's category
    seed: int = 0  # the generator's own seed, separate from training randomness

    RANGES: ClassVar[dict[str, Check]] = {
        "num_users": AT_LEAST_1, "num_items": (lambda v: v >= 2, "an integer >= 2"),
        "num_categories": AT_LEAST_1, "min_length": (lambda v: v >= 3, "an integer >= 3 (leave-one-out needs 3)"),
        "mean_length": (lambda v: v >= 3, "a number >= 3"), "taste_concentration": POSITIVE,
        "sequential_strength": FRACTION,
    }


@dataclass(frozen=True)
class Catalogue:
    """Item attributes of the synthetic shop; index 0 is the padding slot (unused)."""

    category: np.ndarray  # int32 [num_items + 1]
    brand: np.ndarray  # int32 [num_items + 1]
    colour: np.ndarray  # int32 [num_items + 1]
    style: np.ndarray  # int32 [num_items + 1]
    price: np.ndarray  # float32 [num_items + 1], dollars
    popularity: np.ndarray  # float64 [num_items + 1], within-category sampling weight
    content: np.ndarray  # float32 [num_items + 1, 16] latent content vector
    next_categories: np.ndarray  # int32 [num_categories, 2] categories that follow a purchase

    def title(self, item: int) -> str:
        noun = _CATEGORY_NOUNS[int(self.category[item]) % len(_CATEGORY_NOUNS)]
        return (
            f"{_BRANDS[self.brand[item]]} {_STYLES[self.style[item]]} "
            f"{_COLOURS[self.colour[item]]} {noun}"
        )


@dataclass(frozen=True)
class SyntheticShop:
    dataset: SequenceDataset
    catalogue: Catalogue
    tastes: np.ndarray  # float64 [num_users, num_categories]


def generate_shop(config: SyntheticConfig) -> SyntheticShop:
    """Draw a whole shop (catalogue, shoppers, histories) from ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    n_items, n_cat = config.num_items, config.num_categories
    category = np.concatenate([[0], rng.integers(0, n_cat, size=n_items)]).astype(np.int32)
    rank_in_category = np.zeros(n_items + 1)
    for c in range(n_cat):
        members = np.flatnonzero(category[1:] == c) + 1
        rank_in_category[members] = rng.permutation(len(members)) + 1
    popularity = np.maximum(rank_in_category, 1.0) ** -config.popularity_skew
    popularity[0] = 0.0
    centres = rng.normal(size=(n_cat, 16))
    content = (centres[category] + 0.5 * rng.normal(size=(n_items + 1, 16))).astype(np.float32)
    content[0] = 0
    catalogue = Catalogue(
        category=category,
        brand=rng.integers(0, len(_BRANDS), size=n_items + 1).astype(np.int32),
        colour=rng.integers(0, len(_COLOURS), size=n_items + 1).astype(np.int32),
        style=rng.integers(0, len(_STYLES), size=n_items + 1).astype(np.int32),
        price=np.round(np.exp(rng.normal(3.0, 0.8, size=n_items + 1)), 2).astype(np.float32),
        popularity=popularity,
        content=content,
        next_categories=rng.integers(0, n_cat, size=(n_cat, 2)).astype(np.int32),
    )
    members_of = [np.flatnonzero(category == c) for c in range(n_cat)]
    tastes = rng.dirichlet(np.full(n_cat, config.taste_concentration), size=config.num_users)
    extra_mean = max(config.mean_length - config.min_length, 1e-9)
    lengths = config.min_length + rng.geometric(1.0 / (1.0 + extra_mean), size=config.num_users) - 1
    lengths = np.minimum(lengths, n_items)
    sequences = []
    for user in range(config.num_users):
        bought: list[int] = []
        owned = np.zeros(n_items + 1, dtype=bool)
        prev_cat = -1
        while len(bought) < lengths[user]:
            if prev_cat >= 0 and rng.random() < config.sequential_strength:
                cat = int(catalogue.next_categories[prev_cat, rng.integers(2)])
            else:
                cat = int(rng.choice(n_cat, p=tastes[user]))
            members = members_of[cat]
            weights = popularity[members] * ~owned[members]
            if weights.sum() == 0:  # the shopper owns the whole category: fall back to taste
                prev_cat = -1
                continue
            item = int(rng.choice(members, p=weights / weights.sum()))
            owned[item] = True
            bought.append(item)
            prev_cat = cat
        sequences.append(bought)
    dataset = from_lists(sequences, n_items, name="synthetic")
    return SyntheticShop(dataset=dataset, catalogue=catalogue, tastes=tastes)
