"""Frozen-encoder features of the fashion catalogue: MiniLM token states and EfficientNet maps.

With frozen backbones, every fusion head, attribute classifier and retrieval tower trains on the
same encoder outputs, so they are computed once per catalogue and cached on disk
(``ecomjax.encoders.feature_cache``): the colour-free titles' token states ``[N, L, 384]`` and
the photos' unpooled maps ``[N, h, w, 1280]`` (4x4 for the 128 px photos at their native size).
Both are stored as float16 (half the disk and memory; the heads compute in float32), pooled
views are derived on demand. The cache key covers the encoder weights, the exact titles and the
image archive's bytes, so an edited title or another archive never reuses stale features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecomjax.data.fashion import FashionCatalog
from ecomjax.errors import InputError, UnknownKeyError


@dataclass(frozen=True)
class FashionFeatures:
    ids: np.ndarray  # [N] product ids, the row order of every array below
    text_tokens: np.ndarray  # [N, L, 384] float16 token states; zero where text_mask is 0
    text_mask: np.ndarray  # [N, L] int32, 1 = real token
    image_map: np.ndarray  # [N, h, w, 1280] float16 EfficientNet-Lite0 feature map

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row indices of ``ids`` (all must be present)."""
        position = {int(i): r for r, i in enumerate(self.ids)}
        missing = [int(i) for i in ids if int(i) not in position]
        if missing:
            raise UnknownKeyError(f"no features for products {missing[:10]}")
        return np.array([position[int(i)] for i in ids], dtype=np.int64)

    def pooled_text(self) -> np.ndarray:
        """``[N, 384]`` masked mean of the token states (MiniLM's own pooling, unnormalised)."""
        mask = self.text_mask[..., None].astype(np.float32)
        return (self.text_tokens.astype(np.float32) * mask).sum(1) / np.maximum(mask.sum(1), 1)

    def pooled_image(self) -> np.ndarray:
        """``[N, 1280]`` spatial mean of the feature map (EfficientNet's own pooling)."""
        return self.image_map.astype(np.float32).mean(axis=(1, 2))


def encode_catalog(catalog: FashionCatalog, ids: np.ndarray | None = None, *,
                   text_checkpoint: str = "sentence-transformers/all-MiniLM-L6-v2",
                   image_size: int = 128, batch_size: int = 64, cache: bool = True,
                   progress: bool = False) -> FashionFeatures:
    """Token states of the colour-free titles and photo feature maps of ``ids`` (default: all)."""
    from ecomjax.encoders.feature_cache import (
        cached_array,
        content_key,
        directory_fingerprint,
        file_fingerprint,
    )
    from ecomjax.encoders.image import ImageEncoder, resolve_weights
    from ecomjax.encoders.text import TextEncoder
    from ecomjax.encoders.weights import resolve_checkpoint

    ids = catalog.ids if ids is None else np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        raise InputError("encode_catalog: no product ids")
    titles = catalog.clean_titles(catalog.subset(ids))
    text_dir = resolve_checkpoint(text_checkpoint)
    text_key = content_key({"what": "fashion-title-tokens", "checkpoint": directory_fingerprint(text_dir)},
                           titles)

    def text_states() -> np.ndarray:
        states, mask = TextEncoder.from_pretrained(text_dir).token_states(titles, batch_size)
        # the mask rides along as one extra channel, so one cache entry holds both
        return np.concatenate([states, mask[..., None].astype(np.float32)], axis=-1).astype(np.float16)

    packed = cached_array("fashion-text", text_key, text_states, enabled=cache)
    text_tokens, text_mask = packed[..., :-1], packed[..., -1].astype(np.int32)

    weights = resolve_weights()
    image_key = content_key({"what": "fashion-image-maps", "weights": file_fingerprint(weights),
                             "archive": file_fingerprint(catalog.images_path), "size": image_size},
                            arrays=[ids])

    def image_maps() -> np.ndarray:
        encoder = ImageEncoder(weights)
        maps = []
        for start in range(0, len(ids), 512):  # decode 512 photos at a time: bounded memory
            chunk = ids[start:start + 512]
            maps.append(encoder.feature_maps(catalog.images(chunk), batch_size, image_size).astype(np.float16))
            if progress:
                print(f"  image features {start + len(chunk)}/{len(ids)}", flush=True)
        return np.concatenate(maps)

    image_map = cached_array("fashion-image", image_key, image_maps, enabled=cache)
    return FashionFeatures(ids, text_tokens, text_mask, image_map)
