"""Losses of the multi-task ranker: click, purchase (ESMM or clicked-only) and dwell time.

The purchase funnel decides what each head may learn from:

* **click** (pCTR): binary cross-entropy over every impression;
* **purchase**, ``esmm``: the label ``purchase`` exists for every impression and equals
  click x conversion, so the model is trained on pCTCVR = pCTR x pCVR over the entire space and
  pCVR is never fitted on the clicked subset alone (Ma et al., SIGIR 2018). The product is taken
  in log space: log pCTCVR = log sigmoid(a) + log sigmoid(b);
* **purchase**, ``clicked_only``: binary cross-entropy of pCVR on clicked impressions only (the
  conventional model ESMM corrects; it is trained on one sample space and served on another);
* **dwell**: squared error of the predicted mean log seconds, on clicked impressions only; an
  unclicked impression has no dwell time, not a dwell time of zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ecomjax.errors import InputError


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def log_ctcvr(click_logit: jax.Array, cvr_logit: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p, log(1 - p)) of p = sigmoid(click) x sigmoid(cvr), stable for p near 0 and 1."""
    log_p = jax.nn.log_sigmoid(click_logit) + jax.nn.log_sigmoid(cvr_logit)
    log_not_p = jnp.log(-jnp.expm1(jnp.minimum(log_p, -1e-7)))
    return log_p, log_not_p


def esmm_purchase_loss(click_logit: jax.Array, cvr_logit: jax.Array, purchase: jax.Array) -> jax.Array:
    log_p, log_not_p = log_ctcvr(click_logit, cvr_logit)
    return -(purchase * log_p + (1 - purchase) * log_not_p).mean()


def ranker_losses(outputs: dict[str, jax.Array], batch: dict[str, jax.Array], cvr: str) -> dict[str, jax.Array]:
    """Per-task mean losses of one batch (keys: the model's tasks)."""
    clicked = batch["click"]
    losses = {}
    if "click" in outputs:
        losses["click"] = optax.sigmoid_binary_cross_entropy(outputs["click"], clicked).mean()
    if "purchase" in outputs:
        if cvr == "esmm":
            if "click" not in outputs:
                raise InputError("ESMM needs the click head: pCTCVR = pCTR x pCVR")
            losses["purchase"] = esmm_purchase_loss(outputs["click"], outputs["purchase"], batch["purchase"])
        elif cvr == "clicked_only":
            xent = optax.sigmoid_binary_cross_entropy(outputs["purchase"], batch["purchase"])
            losses["purchase"] = _masked_mean(xent, clicked)
        else:
            raise InputError(f"loss.cvr: {cvr!r}; allowed: esmm, clicked_only")
    if "dwell" in outputs:
        losses["dwell"] = _masked_mean((outputs["dwell"] - batch["log_dwell"]) ** 2, clicked)
    return losses


def weighted_total(losses: dict[str, jax.Array], weights: dict[str, float]) -> jax.Array:
    return sum(weights[name] * value for name, value in losses.items())
