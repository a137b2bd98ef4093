"""Synthetic impression logs with a known ground truth: click, purchase and dwell time.

The shop of ``ecomjax.data.synthetic`` (catalogue, shoppers' category tastes, purchase
histories) is shown to its shoppers in result lists. Every outcome is drawn from probabilities
the generator keeps, so a test can compare a model with the best any model could do (the
Bayes-optimal AUC is the AUC of the true probability on the drawn labels):

* **click**: logit = base + affinity for the item's category (``log(C * share + 0.3)``, share =
  the category's share of the shopper's last ``history_len`` purchases) + the shopper
  segment's brand preference - the segment's price sensitivity x log price + item quality +
  device - ``position_bias`` x log2(1 + position). Positions are assigned at random, so the
  position effect is identifiable and the position-free probability (``p_click_top``: shown
  first) is the satisfaction a re-ranking can actually change.
* **purchase** only after a click: ``would_buy`` ~ Bernoulli(p_cvr) is drawn for *every*
  impression and ``purchase = click * would_buy``. So the CVR of an unclicked impression has a
  label too: the counterfactual that ESMM's "entire space" argument is about. p_cvr has its own
  drivers (colour preference, stronger price sensitivity) next to shared ones (quality, taste).
* **dwell** only after a click: log-normal seconds, mean log dwell from quality, the segment's
  style preference and taste.

Features a model sees: user, segment, device, item, category, brand, colour, style, position,
standardised log price, the item's standardised log popularity (its sales rank: a feature real
rankers have) and the categories of the shopper's last purchases (a sequence field sharing the
category table). The rest of item quality and the segments' preferences are hidden and must be
learnt from ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecomjax.data.schema import CategoricalField, FeatureSchema, ImpressionData, SequenceField
from ecomjax.data.synthetic import _BRANDS, _COLOURS, _STYLES, SyntheticConfig, generate_shop
from ecomjax.errors import InputError


@dataclass
class ImpressionConfig:
    num_requests: int = 40000  # result lists shown; impressions = num_requests * list_size
    list_size: int = 10
    num_segments: int = 6  # shopper segments: brand / colour / style preferences and price sensitivity
    history_len: int = 10  # purchases of the shopper the model sees (most recent first)
    taste_share: float = 0.5  # share of a list drawn from the shopper's categories (rest: popular items)
    click_base: float = -2.2
    purchase_base: float = -2.2
    position_bias: float = 0.5  # click logit per log2(1 + position)
    dwell_noise: float = 0.5  # std of log dwell around its mean
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.list_size < 1 or self.num_segments < 1 or self.history_len < 1:
            raise InputError("impressions: num_requests, list_size, num_segments and history_len must be >= 1")
        if not 0 <= self.taste_share <= 1:
            raise InputError(f"impressions.taste_share: {self.taste_share} must be in [0, 1]")
        if self.dwell_noise < 0:
            raise InputError(f"impressions.dwell_noise: {self.dwell_noise} must be >= 0")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_lists(rng: np.random.Generator, users: np.ndarray, list_size: int, tastes: np.ndarray,
                category: np.ndarray, popularity: np.ndarray, taste_share: float) -> np.ndarray:
    """Items of each request: ``taste_share`` from the user's categories (by popularity inside
    the category), the rest by global popularity; no item twice in a list.

    Vectorised: 3x the list size is drawn per request and the first distinct items kept; the
    rare request left short is drawn again."""
    n_cat = tastes.shape[1]
    global_cdf = np.cumsum(popularity / popularity.sum())
    members = [np.flatnonzero(category == c) for c in range(n_cat)]
    member_cdf = [np.cumsum(popularity[m] / popularity[m].sum()) if len(m) else None for m in members]
    items = np.zeros((len(users), list_size), np.int64)
    todo = np.arange(len(users))
    while len(todo):
        draws = 3 * list_size
        u = users[todo]
        pick = np.minimum(np.searchsorted(global_cdf, rng.random((len(todo), draws))), len(global_cdf) - 1)
        from_taste = rng.random((len(todo), draws)) < taste_share
        taste_cdf = np.cumsum(tastes[u], axis=1)
        cats = (rng.random((len(todo), draws, 1)) > taste_cdf[:, None, :]).sum(-1).clip(0, n_cat - 1)
        for c in np.unique(cats[from_taste]):
            if member_cdf[c] is None:
                continue
            where = from_taste & (cats == c)
            j = np.searchsorted(member_cdf[c], rng.random(int(where.sum()))).clip(0, len(members[c]) - 1)
            pick[where] = members[c][j]
        short = []
        for row, r in enumerate(todo):
            _, first = np.unique(pick[row], return_index=True)
            if len(first) < list_size:
                short.append(r)
                continue
            keep = pick[row][np.sort(first)[:list_size]]
            items[r] = rng.permutation(keep)
        todo = np.asarray(short, np.int64)
    return items


def generate_impressions(shop_config: SyntheticConfig, config: ImpressionConfig) -> ImpressionData:
    """Draw the impression log (rows grouped by request, positions 1..list_size)."""
    shop = generate_shop(shop_config)
    cat, tastes = shop.catalogue, shop.tastes
    rng = np.random.default_rng(config.seed)
    n_users, n_cat = tastes.shape
    n_items = len(cat.category) - 1
    S, L = config.num_segments, config.list_size

    # hidden world: segments and their preferences, item quality
    segment = rng.integers(0, S, size=n_users)
    price_sensitivity = rng.normal(0.0, 0.8, size=S)
    brand_pref = rng.normal(0.0, 0.5, size=(S, len(_BRANDS)))
    colour_pref = rng.normal(0.0, 0.6, size=(S, len(_COLOURS)))
    style_pref = rng.normal(0.0, 0.3, size=(S, len(_STYLES)))
    log_pop = np.log(np.maximum(cat.popularity, 1e-12))
    log_pop = (log_pop - log_pop[1:].mean()) / log_pop[1:].std()
    quality = 0.25 * rng.normal(size=n_items + 1) + 0.3 * log_pop
    log_price = np.log(cat.price.astype(np.float64))
    price_z = (log_price - log_price[1:].mean()) / log_price[1:].std()

    # what the shopper bought before: categories of the last purchases, most recent first
    history = np.zeros((n_users, config.history_len), np.int32)
    for u in range(n_users):
        recent = shop.dataset.sequence(u)[::-1][: config.history_len]
        history[u, : len(recent)] = cat.category[recent] + 1

    # requests and their lists
    users = rng.integers(0, n_users, size=config.num_requests)
    device = rng.integers(0, 2, size=config.num_requests)  # 0 mobile, 1 desktop
    popularity = cat.popularity.copy()
    items = _draw_lists(rng, users, L, tastes, cat.category, popularity, config.taste_share)
    positions = np.tile(np.arange(1, L + 1), config.num_requests)
    user = np.repeat(users, L)
    dev = np.repeat(device, L)
    item = items.reshape(-1)
    seg = segment[user]
    c = cat.category[item]

    # affinity for the item's category as the shopper's recent purchases show it (observable
    # through the history field, so the ceiling is reachable by learning, not by mind-reading)
    share = (history[user] == (c + 1)[:, None]).sum(1) / config.history_len
    taste_term = np.log(n_cat * share + 0.3)
    shared = 0.5 * taste_term + quality[item]
    click_free = (config.click_base + shared + brand_pref[seg, cat.brand[item]]
                  - 0.5 * price_sensitivity[seg] * price_z[item] + 0.2 * dev)
    p_click = _sigmoid(click_free - config.position_bias * np.log2(1 + positions))
    p_click_top = _sigmoid(click_free - config.position_bias)
    p_cvr = _sigmoid(config.purchase_base + 0.6 * shared + colour_pref[seg, cat.colour[item]]
                     - 1.0 * price_sensitivity[seg] * price_z[item] - 0.3 * dev)
    dwell_mean = 3.4 + 0.5 * quality[item] + style_pref[seg, cat.style[item]] + 0.15 * taste_term

    click = (rng.random(len(item)) < p_click).astype(np.float32)
    would_buy = (rng.random(len(item)) < p_cvr).astype(np.float32)
    purchase = click * would_buy
    dwell = np.where(click > 0, np.exp(dwell_mean + config.dwell_noise * rng.normal(size=len(item))), 0.0)

    schema = FeatureSchema(
        categorical=(
            CategoricalField("user", n_users + 1), CategoricalField("segment", S + 1),
            CategoricalField("device", 3), CategoricalField("item", n_items + 1),
            CategoricalField("category", n_cat + 1), CategoricalField("brand", len(_BRANDS) + 1),
            CategoricalField("colour", len(_COLOURS) + 1), CategoricalField("style", len(_STYLES) + 1),
            CategoricalField("position", L + 1),
        ),
        numeric=("log_price", "log_popularity"),
        sequences=(SequenceField("history_category", n_cat + 1, config.history_len, table="category"),),
    )
    categorical = np.stack([user + 1, seg + 1, dev + 1, item, c + 1, cat.brand[item] + 1,
                            cat.colour[item] + 1, cat.style[item] + 1, positions], axis=1).astype(np.int32)
    data = ImpressionData(
        schema=schema, categorical=categorical, numeric=np.stack([price_z[item], log_pop[item]], axis=1).astype(np.float32),
        sequences=history[user][:, None, :], click=click, purchase=purchase,
        dwell=dwell.astype(np.float32), users=user.astype(np.int64),
        groups=np.repeat(np.arange(config.num_requests), L).astype(np.int64),
        truth={"p_click": p_click, "p_click_top": p_click_top, "p_cvr": p_cvr, "dwell_mean": dwell_mean,
               "would_buy": would_buy},
        source="synthetic")
    return data.validate()
