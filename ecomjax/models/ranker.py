"""Multi-task field-embedding ranker: embeddings per feature field, a feature-interaction
network (AutoInt-style transformer over fields, or a DCN-v2 cross network), and task heads
shared by a bottom or mixed by MMoE.

Why each part:

* every field (categorical id, numeric value, pooled sequence) becomes one ``embed_dim`` vector,
  so the interaction network sees a set of fields whatever the data source;
* ``autoint`` (Song et al., CIKM 2019) lets each field attend to every other: pre-LN transformer
  blocks over the field vectors, which learn which pairs interact (user x category, segment x
  price); ``dcnv2`` (Wang et al., WWW 2021) builds explicit bounded-degree crosses
  ``x0 * (W x_l + b) + x_l`` beside a deep MLP, cheaper per example;
* ``shared_bottom`` feeds one representation to every task tower; ``mmoe`` (Ma et al., KDD 2018)
  gives each task its own softmax gate over shared experts, which helps when tasks conflict
  (what gets a click is not quite what gets a purchase);
* heads return raw outputs: click and purchase logits (the task decides ESMM or not) and the
  mean log dwell. The model knows nothing of losses.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ecomjax.data.schema import FeatureSchema
from ecomjax.errors import InputError
from ecomjax.models.axes import logical_init, padded_vocab, zero_padded_rows
from ecomjax.models.layers import dense

_EMBED_INIT = nnx.initializers.normal(0.05)
_KERNEL_INIT = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


@dataclass
class RankerModelConfig:
    """The ``model`` section of a ranker run."""

    interaction: Literal["autoint", "dcnv2"] = "autoint"
    embed_dim: int = 16  # width of every field vector
    # DIN-style attention of a history sequence to the candidate's id in the same table
    # (e.g. history categories -> the item's category) and its exact-match share: three more
    # fields per such sequence
    target_attention: bool = True
    first_order: bool = True  # "wide" part: a scalar per id and numeric field, per task, added to each head
    pairwise: bool = True  # factorisation-machine term over the field vectors, per task, added to each head
    attention_dim: int = 32  # autoint: transformer width over the fields
    attention_layers: int = 2
    attention_heads: int = 2
    cross_layers: int = 3  # dcnv2
    cross_rank: int = 0  # dcnv2: 0 = full-rank cross matrices, N = low-rank U V
    deep: list[int] = field(default_factory=lambda: [256, 128])  # dcnv2: parallel deep network
    sharing: Literal["shared_bottom", "mmoe"] = "mmoe"
    experts: int = 4  # mmoe
    expert_hidden: list[int] = field(default_factory=lambda: [128])  # an expert (or the shared bottom)
    tower_hidden: list[int] = field(default_factory=lambda: [64])  # each task's tower
    dropout: float = 0.1
    # training: zero whole field vectors with this probability, so no single field (a user id
    # that memorises its few impressions) carries the prediction alone
    field_dropout: float = 0.0


def _id_table(rows: int, width: int, init, column_axis: str | None, rngs: nnx.Rngs) -> nnx.Embed:
    """An id table (one row per value of a field) padded to ``padded_vocab`` rows so it splits
    along ``vocab`` over any ``model`` axis; the real rows get exactly the values an unpadded
    table would, the padding rows (never looked up) zeros."""
    return nnx.Embed(padded_vocab(rows), width, rngs=rngs,
                     embedding_init=logical_init(zero_padded_rows(init, rows), "vocab", column_axis))


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, axes=("embed", "mlp"), bias_init=_ZEROS) -> nnx.Linear:
    return dense(d_in, d_out, axes, init=_KERNEL_INIT, bias_init=bias_init, rngs=rngs)


class MLP(nnx.Module):
    """ReLU layers with dropout; ``hidden=()`` is the identity."""

    def __init__(self, d_in: int, hidden: Sequence[int], dropout: float, rngs: nnx.Rngs):
        dims = [d_in, *hidden]
        self.layers = nnx.List([_linear(a, b, rngs) for a, b in itertools.pairwise(dims)])
        self.dropout = nnx.Dropout(dropout)
        self.out_dim = dims[-1]

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        for layer in self.layers:
            x = self.dropout(jax.nn.relu(layer(x)), deterministic=deterministic, rngs=rngs)
        return x


class TargetAttention(nnx.Module):
    """DIN-style attention of a behaviour sequence to the candidate (Zhou et al., KDD 2018).

    Each history entry gets an unnormalised weight ``a_j = MLP([h_j, t, h_j * t, h_j - t])``
    (no softmax, so "bought this category 5 times" stays stronger than "once"); the field
    vectors are the weighted sum ``sum_j a_j h_j / max_len``, the total weight
    ``sum_j a_j / max_len`` (a scalar, embedded like a numeric field) and the exact-match share
    (``exact_matches``). Mean pooling alone cannot say how much of the history matches *this*
    candidate, which is what affinity is.
    """

    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
        self.mlp = MLP(4 * dim, (hidden,), 0.0, rngs)
        self.score = _linear(hidden, 1, rngs, ("mlp", None))
        self.mass_scale = nnx.Param(_EMBED_INIT(rngs.params(), (dim,)))
        self.mass_bias = nnx.Param(jnp.zeros((dim,)))
        self.match_scale = nnx.Param(_EMBED_INIT(rngs.params(), (dim,)))
        self.match_bias = nnx.Param(jnp.zeros((dim,)))

    def exact_matches(self, ids: jax.Array, target_ids: jax.Array) -> jax.Array:
        """Share of the history equal to the candidate's id (SIM's "hard search", Pi et al.
        2020: the behaviours of the candidate's own category), embedded as a field."""
        share = ((ids == target_ids[:, None]) & (ids > 0)).sum(1, keepdims=True) / ids.shape[1]
        return share * self.match_scale[...] + self.match_bias[...]

    def __call__(self, history: jax.Array, mask: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = jnp.broadcast_to(target[:, None, :], history.shape)
        features = jnp.concatenate([history, t, history * t, history - t], axis=-1)
        weights = self.score(self.mlp(features, deterministic=True, rngs=None))[..., 0] * mask
        length = history.shape[1]
        pooled = (weights[..., None] * history).sum(1) / length
        mass = weights.sum(1, keepdims=True) / length
        return pooled, mass * self.mass_scale[...] + self.mass_bias[...]


class FieldEmbedding(nnx.Module):
    """``[B, num_fields, embed_dim]`` from categorical ids, numeric values and id sequences.

    A sequence field is mean-pooled; one that shares the table of a categorical field (the
    candidate's id in the same space) also gets ``TargetAttention`` to that field when
    ``target_attention`` is on: three more field vectors.
    """

    def __init__(self, schema: FeatureSchema, embed_dim: int, rngs: nnx.Rngs, target_attention: bool = True):
        self.schema = schema
        targeted = [s for s in schema.sequences if s.table is not None] if target_attention else []
        self.attention = nnx.List([TargetAttention(embed_dim, 4 * embed_dim, rngs) for _ in targeted])
        self.num_fields = schema.num_fields + 3 * len(targeted)
        self.tables = nnx.List([_id_table(f.vocab_size, embed_dim, _EMBED_INIT, "embed", rngs)
                                for f in schema.categorical])
        own = [s for s in schema.sequences if s.table is None]
        self.sequence_tables = nnx.List([_id_table(s.vocab_size, embed_dim, _EMBED_INIT, "embed", rngs) for s in own])
        n_num = max(len(schema.numeric), 1)
        self.numeric_scale = nnx.Param(_EMBED_INIT(rngs.params(), (n_num, embed_dim)))
        self.numeric_bias = nnx.Param(jnp.zeros((n_num, embed_dim)))

    def __call__(self, categorical: jax.Array, numeric: jax.Array, sequences: jax.Array) -> jax.Array:
        fields = [table(categorical[:, i]) for i, table in enumerate(self.tables)]
        schema = self.schema
        if schema.numeric:
            fields += list(jnp.moveaxis(numeric[:, :, None] * self.numeric_scale[...] + self.numeric_bias[...], 1, 0))
        own = iter(self.sequence_tables)
        attention = iter(self.attention)
        for i, seq in enumerate(schema.sequences):
            table = self.tables[schema.index(seq.table)] if seq.table else next(own)
            ids = sequences[:, i, : seq.max_len]
            mask = (ids > 0).astype(jnp.float32)
            history = table(ids)
            fields.append((history * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0))
            if seq.table is not None and len(self.attention):
                column = schema.index(seq.table)
                attend = next(attention)
                fields.extend(attend(history, mask, fields[column]))
                fields.append(attend.exact_matches(ids, categorical[:, column]))
        return jnp.stack(fields, axis=1)


class FieldTransformer(nnx.Module):
    """AutoInt-style interaction: pre-LN transformer blocks over the set of field vectors."""

    def __init__(self, num_fields: int, embed_dim: int, width: int, layers: int, heads: int,
                 dropout: float, rngs: nnx.Rngs):
        if width % heads:
            raise InputError(f"model.attention_dim={width} must be divisible by model.attention_heads={heads}")
        self.project = _linear(embed_dim, width, rngs, ("embed", "heads"))
        self.attention = nnx.List([
            nnx.MultiHeadAttention(heads, width, qkv_features=width, out_features=width, dropout_rate=dropout,
                                   decode=False, rngs=rngs) for _ in range(layers)])
        self.ffn = nnx.List([MLP(width, (2 * width,), dropout, rngs) for _ in range(layers)])
        self.ffn_out = nnx.List([_linear(2 * width, width, rngs, ("mlp", "heads")) for _ in range(layers)])
        self.norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(2 * layers)])
        self.out_dim = num_fields * width

    def __call__(self, fields: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        x = self.project(fields)
        for i, attention in enumerate(self.attention):
            h = self.norms[2 * i](x)
            x = x + attention(h, deterministic=deterministic, rngs=rngs)
            h = self.norms[2 * i + 1](x)
            x = x + self.ffn_out[i](self.ffn[i](h, deterministic=deterministic, rngs=rngs))
        return x.reshape(x.shape[0], -1)


class CrossNetwork(nnx.Module):
    """DCN-v2: ``x_{l+1} = x0 * (W x_l + b) + x_l`` (W full, or ``U V`` when ``rank`` > 0), in
    parallel with a deep MLP; outputs concatenated."""

    def __init__(self, num_fields: int, embed_dim: int, layers: int, rank: int, deep: Sequence[int],
                 dropout: float, rngs: nnx.Rngs):
        d = num_fields * embed_dim
        if rank:
            self.down = nnx.List([_linear(d, rank, rngs, ("embed", "mlp")) for _ in range(layers)])
            self.up = nnx.List([_linear(rank, d, rngs, ("mlp", "embed")) for _ in range(layers)])
        else:
            self.down = nnx.List([_linear(d, d, rngs, ("embed", "mlp")) for _ in range(layers)])
            self.up = nnx.List([])
        self.deep = MLP(d, deep, dropout, rngs)
        self.out_dim = d + self.deep.out_dim

    def __call__(self, fields: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        x0 = fields.reshape(fields.shape[0], -1)
        x = x0
        for i, down in enumerate(self.down):
            mixed = self.up[i](down(x)) if len(self.up) else down(x)
            x = x0 * mixed + x
        return jnp.concatenate([x, self.deep(x0, deterministic=deterministic, rngs=rngs)], axis=-1)


class FirstOrderTerms(nnx.Module):
    """The "wide" part (Wide & Deep, DeepFM): a scalar weight per categorical id and per
    numeric field, per task, added to each head. A per-item click bias is then one parameter
    with its own gradient instead of a direction the deep network must carve out of a shared
    embedding, which is how much of CTR is explained (item quality, position, device)."""

    def __init__(self, schema: FeatureSchema, num_tasks: int, rngs: nnx.Rngs):
        self.tables = nnx.List([_id_table(f.vocab_size, num_tasks, _ZEROS, None, rngs) for f in schema.categorical])
        self.numeric = nnx.Param(jnp.zeros((max(len(schema.numeric), 1), num_tasks)))
        self.has_numeric = bool(schema.numeric)

    def __call__(self, categorical: jax.Array, numeric: jax.Array) -> jax.Array:
        total = sum(table(categorical[:, i]) for i, table in enumerate(self.tables))
        if self.has_numeric:
            total = total + numeric @ self.numeric[...]
        return total  # [B, num_tasks]


class PairwiseTerms(nnx.Module):
    """Factorisation-machine term (Rendle 2010; DeepFM's FM part) per task: the sum over field
    pairs of ``<e_i, r_t * e_j>``, in O(fields x dim) as ``((sum e)^2 - sum e^2) / 2``. ``r_t``
    (one vector per task, starting at 0) lets each task weight the embedding dimensions: what
    crosses with price for a click need not for a purchase. Second-order crosses of two fields
    (segment x brand, segment x price) are then single dot products, not something the deep part
    must discover."""

    def __init__(self, dim: int, num_tasks: int):
        self.weights = nnx.Param(jnp.zeros((num_tasks, dim)))

    def __call__(self, fields: jax.Array) -> jax.Array:
        crossed = 0.5 * (fields.sum(1) ** 2 - (fields ** 2).sum(1))  # [B, dim]
        return crossed @ self.weights[...].T  # [B, num_tasks]


class MultiTaskRanker(nnx.Module):
    """Outputs ``{task: [B]}``: ``click`` / ``purchase`` logits, ``dwell`` = mean log seconds.

    ``initial_bias`` starts each head at its base rate (logit of the CTR, mean log dwell), so
    the first steps learn ranking rather than the intercept.
    """

    def __init__(self, schema: FeatureSchema, tasks: Sequence[str], *, interaction: str = "autoint",
                 embed_dim: int = 16, attention_dim: int = 32, attention_layers: int = 2,
                 attention_heads: int = 2, cross_layers: int = 3, cross_rank: int = 0,
                 deep: Sequence[int] = (256, 128), sharing: str = "mmoe", experts: int = 4,
                 expert_hidden: Sequence[int] = (128,), tower_hidden: Sequence[int] = (64,),
                 dropout: float = 0.1, field_dropout: float = 0.0, target_attention: bool = True,
                 first_order: bool = True, pairwise: bool = True,
                 initial_bias: dict[str, float] | None = None, rngs: nnx.Rngs):
        if not tasks:
            raise InputError("a ranker needs at least one task head")
        self.tasks = tuple(tasks)
        self.sharing = sharing
        self.field_dropout = nnx.Dropout(field_dropout, broadcast_dims=(2,))
        self.first_order = FirstOrderTerms(schema, len(self.tasks), rngs) if first_order else None
        self.pairwise = PairwiseTerms(embed_dim, len(self.tasks)) if pairwise else None
        self.embedding = FieldEmbedding(schema, embed_dim, rngs, target_attention)
        n = self.embedding.num_fields
        if interaction == "autoint":
            self.interaction = FieldTransformer(n, embed_dim, attention_dim, attention_layers, attention_heads,
                                                dropout, rngs)
        elif interaction == "dcnv2":
            self.interaction = CrossNetwork(n, embed_dim, cross_layers, cross_rank, deep, dropout, rngs)
        else:
            raise InputError(f"model.interaction: {interaction!r}; allowed: autoint, dcnv2")
        d = self.interaction.out_dim
        if sharing == "mmoe":
            self.experts = nnx.List([MLP(d, expert_hidden, dropout, rngs) for _ in range(experts)])
            self.gates = nnx.Dict({t: _linear(d, experts, rngs) for t in self.tasks})
            shared_dim = self.experts[0].out_dim
        elif sharing == "shared_bottom":
            self.bottom = MLP(d, expert_hidden, dropout, rngs)
            shared_dim = self.bottom.out_dim
        else:
            raise InputError(f"model.sharing: {sharing!r}; allowed: shared_bottom, mmoe")
        bias = initial_bias or {}
        self.towers = nnx.Dict({t: MLP(shared_dim, tower_hidden, dropout, rngs) for t in self.tasks})
        self.heads = nnx.Dict({
            t: _linear(self.towers[t].out_dim, 1, rngs, ("mlp", None),
                       bias_init=nnx.initializers.constant(bias.get(t, 0.0))) for t in self.tasks})

    @classmethod
    def from_config(cls, config: RankerModelConfig, schema: FeatureSchema, tasks: Sequence[str],
                    initial_bias: dict[str, float] | None = None, *, rngs: nnx.Rngs) -> MultiTaskRanker:
        m = config
        return cls(schema, tasks, interaction=m.interaction, embed_dim=m.embed_dim, attention_dim=m.attention_dim,
                   attention_layers=m.attention_layers, attention_heads=m.attention_heads,
                   cross_layers=m.cross_layers, cross_rank=m.cross_rank, deep=m.deep, sharing=m.sharing,
                   experts=m.experts, expert_hidden=m.expert_hidden, tower_hidden=m.tower_hidden,
                   dropout=m.dropout, field_dropout=m.field_dropout, target_attention=m.target_attention,
                   first_order=m.first_order, pairwise=m.pairwise, initial_bias=initial_bias, rngs=rngs)

    def __call__(self, categorical: jax.Array, numeric: jax.Array, sequences: jax.Array, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        fields = self.field_dropout(self.embedding(categorical, numeric, sequences), deterministic=deterministic,
                                    rngs=rngs)
        x = self.interaction(fields, deterministic=deterministic, rngs=rngs)
        outputs = {}
        if self.sharing == "mmoe":
            expert_out = jnp.stack([e(x, deterministic=deterministic, rngs=rngs) for e in self.experts], axis=1)
        else:
            shared = self.bottom(x, deterministic=deterministic, rngs=rngs)
        wide = self.first_order(categorical, numeric) if self.first_order is not None else None
        if self.pairwise is not None:
            cross = self.pairwise(fields)
            wide = cross if wide is None else wide + cross
        for i, t in enumerate(self.tasks):
            if self.sharing == "mmoe":
                gate = jax.nn.softmax(self.gates[t](x), axis=-1)
                shared = jnp.einsum("be,bed->bd", gate, expert_out)
            hidden = self.towers[t](shared, deterministic=deterministic, rngs=rngs)
            outputs[t] = self.heads[t](hidden)[:, 0] + (wide[:, i] if wide is not None else 0.0)
        return outputs
