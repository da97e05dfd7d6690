"""transformers' ``BertModel`` (MiniLM, BERT, ...) as a Flax NNX encoder on jaxembed tables.

The word, position and token-type tables are ``jaxembed.Embed`` modules loaded with
``jaxembed.interop.load_embeddings`` (trainable, the word table with ``config.json``'s
``pad_token_id`` as ``padding_idx``); the rest is plain flax: ``nnx.Linear``, ``nnx.LayerNorm``,
exact-erf GELU, and transformers' eager attention (an additive mask holding ``finfo.min`` at
padding keys). Attribute names follow transformers' modules, so ``encoder.layer[i].attention.self.
query.kernel`` is the transpose of ``encoder.layer.{i}.attention.self.query.weight``.

Deliberate differences from transformers: no dropout (inference and deterministic fine-tuning);
no decoder, cross-attention or cache; ``hidden_act`` must be ``"gelu"`` and
``position_embedding_type`` ``"absolute"`` (else NotImplementedError).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import jaxembed
from jaxembed import interop


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        for name, supported in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
            if getattr(self, name) != supported:
                raise NotImplementedError(f"{name}={getattr(self, name)!r}: only {supported!r}")

    @classmethod
    def from_json(cls, path) -> BertConfig:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        embed = functools.partial(
            jaxembed.Embed,
            features=config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(config.initializer_range),
            rngs=rngs,
        )
        self.word_embeddings = embed(config.vocab_size, padding_idx=config.pad_token_id)
        self.position_embeddings = embed(config.max_position_embeddings)
        self.token_type_embeddings = embed(config.type_vocab_size)
        self.LayerNorm = _layer_norm(config, dtype, param_dtype, rngs)

    def sum(self, input_ids, token_type_ids):
        """word + token type + position, before the LayerNorm (transformers' order of adds)."""
        positions = jnp.arange(input_ids.shape[-1])
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return x + self.position_embeddings(positions)

    def __call__(self, input_ids, token_type_ids):
        return self.LayerNorm(self.sum(input_ids, token_type_ids))


def _layer_norm(config, dtype, param_dtype, rngs):
    # use_fast_variance=False: E[(x - mean)^2] as torch, not E[x^2] - mean^2 (cancellation).
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        rngs=rngs,
    )


def _linear(config, n_in, n_out, dtype, param_dtype, precision, rngs):
    return nnx.Linear(
        n_in,
        n_out,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        kernel_init=nnx.initializers.normal(config.initializer_range),
        rngs=rngs,
    )


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        h = config.hidden_size
        self.query, self.key, self.value = (_linear(config, h, h, **kw) for _ in range(3))
        self.num_heads = config.num_attention_heads
        self.precision = kw["precision"]

    def __call__(self, x, mask_bias):
        split = lambda t: t.reshape(*x.shape[:2], self.num_heads, -1).swapaxes(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=self.precision)
        weights = jax.nn.softmax(scores * q.shape[-1] ** -0.5 + mask_bias, axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v, precision=self.precision)
        return out.swapaxes(1, 2).reshape(x.shape)


class _DenseLayerNorm(nnx.Module):
    """transformers' ``BertSelfOutput`` / ``BertOutput``: LayerNorm(dense(x) + residual)."""

    def __init__(self, config: BertConfig, n_in: int, *, dtype, param_dtype, precision, rngs):
        self.dense = _linear(config, n_in, config.hidden_size, dtype, param_dtype, precision, rngs)
        self.LayerNorm = _layer_norm(config, dtype, param_dtype, rngs)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        self.self = BertSelfAttention(config, **kw)
        self.output = _DenseLayerNorm(config, config.hidden_size, **kw)

    def __call__(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        self.dense = _linear(config, config.hidden_size, config.intermediate_size, **kw)

    def __call__(self, x):
        return jax.nn.gelu(self.dense(x), approximate=False)  # transformers' "gelu" is erf's


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        self.attention = BertAttention(config, **kw)
        self.intermediate = BertIntermediate(config, **kw)
        self.output = _DenseLayerNorm(config, config.intermediate_size, **kw)

    def __call__(self, x, mask_bias):
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        self.layer = nnx.List([BertLayer(config, **kw) for _ in range(config.num_hidden_layers)])

    def __call__(self, x, mask_bias):
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertPooler(nnx.Module):
    def __init__(self, config: BertConfig, **kw):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, **kw)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


class EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # (batch, length, hidden)
    pooler_output: jax.Array  # (batch, hidden): tanh(dense([CLS] state)), transformers' pooler


class BertModel(nnx.Module):
    """transformers' ``BertModel`` (encoder + pooler), on jaxembed tables.

    ``dtype``: computation/output dtype (None: the parameters'); ``param_dtype``: parameters';
    ``precision``: of the matmuls (``jax.lax.Precision``; None is JAX's backend default, which
    on TPU is bfloat16 passes: pass ``"highest"`` for float32 accuracy there).
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.config = config
        self.embeddings = BertEmbeddings(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = BertEncoder(config, **kw)
        self.pooler = BertPooler(config, **kw)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> EncoderOutput:
        """``input_ids``, ``attention_mask`` (1 = real token, 0 = padding), ``token_type_ids``:
        integer arrays of shape (batch, length); the mask and types default to ones and zeros."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # transformers' eager mask: 0 where attended, the dtype's lowest value at padding keys.
        mask_bias = jnp.where(attention_mask[:, None, None, :] != 0, 0, jnp.finfo(x.dtype).min)
        hidden = self.encoder(x, mask_bias.astype(x.dtype))
        return EncoderOutput(hidden, self.pooler(hidden))

    @classmethod
    def from_pretrained(
        cls,
        model_dir,
        *,
        dtype: Any = None,
        param_dtype: Any = None,
        precision: Any = None,
        **embedding_options,
    ) -> BertModel:
        """The model of a Hugging Face model directory (``config.json`` + ``model.safetensors``
        or ``pytorch_model.bin``; keys with or without a ``bert.`` prefix). ``param_dtype``
        converts the stored parameters (None keeps their dtype); ``embedding_options`` (e.g.
        ``freeze=True``) go to ``interop.load_embeddings`` for the three tables."""
        config = BertConfig.from_json(Path(model_dir) / "config.json")
        ckpt = interop.Checkpoint(model_dir)
        word = next(
            (k for k in ckpt.keys() if k.endswith("embeddings.word_embeddings.weight")), None
        )
        if word is None:
            raise KeyError(
                f"{ckpt.where()}: no 'embeddings.word_embeddings.weight': not a BERT checkpoint"
            )
        prefix = word[: -len("embeddings.word_embeddings.weight")]
        names = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        keys = [f"{prefix}embeddings.{name}.weight" for name in names]
        for key in keys:
            ckpt.check_key(key)  # a short KeyError naming the file and the closest keys
        tables = interop.load_embeddings(
            ckpt,
            pattern=prefix + "embeddings.*_embeddings.weight",
            dtype=dtype,
            param_dtype=param_dtype,
            **embedding_options,
        )
        param_dtype = param_dtype or tables[word].embedding.get_value().dtype
        model = nnx.eval_shape(
            lambda: cls(
                config, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(0)
            )
        )
        for name, key in zip(names, keys):
            setattr(model.embeddings, name, tables[key])
        torch_name = {"kernel": "weight", "bias": "bias", "scale": "weight"}
        for path, var in list(nnx.iter_graph(model)):
            if isinstance(var, nnx.Param) and isinstance(var.get_value(), jax.ShapeDtypeStruct):
                value = ckpt.get(
                    prefix + ".".join(map(str, path[:-1])) + "." + torch_name[str(path[-1])]
                )
                value = value.T if path[-1] == "kernel" else value  # torch stores (out, in)
                var.set_value(jnp.asarray(value, param_dtype))
        return model


def mean_pooling(hidden, attention_mask):
    """The mean of each sequence's real-token states (sentence-transformers' mean pooling)."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1e-9)


def cls_pooling(hidden, attention_mask=None):
    """The ``[CLS]`` (first) token's state, as the tutorial's method 2."""
    del attention_mask
    return hidden[..., 0, :]
