"""``jaxembed.models.BertModel`` (the offline MiniLM-L6) against transformers' torch ``BertModel``.

Real sentences, tokenized by Hugging Face ``tokenizers`` from the model's ``tokenizer.json`` and
padded. The embeddings block (word + token type + position, before its LayerNorm) is a gather
and two adds in the same order: bit-exact. Everything after is judged against float64 runs of
both frameworks (transformers' eager attention, ``model.double()``; the JAX model under x64 with
``param_dtype=float64``): the JAX float32 error must stay within a small multiple of torch's own
float32 error (``tolerances.ENCODER_F32_VS_F64``), and the two float64 runs must agree to
``ENCODER_F64_EPS``. Fine-tuning: 5 SGD steps of the word table from identical weights.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import tolerances as tol
from conftest import MINILM_DIR, needs_minilm

pytestmark = needs_minilm

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Hello!",
    "Embeddings map discrete tokens to dense vectors, which a transformer then mixes.",
]
TENSORS = ("embeddings", "last_hidden_state", "pooler_output")
F32_EPS = float(np.finfo(np.float32).eps)


def _tokenize(sentences):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest sentence
    encodings = tokenizer.encode_batch(sentences)
    return {name: np.array([getattr(e, attr) for e in encodings])
            for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                               ("token_type_ids", "type_ids"))}


@pytest.fixture(scope="module")
def batch():
    b = _tokenize(SENTENCES)
    assert (b["attention_mask"] == 0).any()  # padded
    return b


@pytest.fixture(scope="module")
def torch_model():
    from transformers import BertModel

    return BertModel.from_pretrained(MINILM_DIR, local_files_only=True,
                                     attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def jax_model():
    from jaxembed.models import BertModel

    return BertModel.from_pretrained(MINILM_DIR, precision="highest")


def _torch_run(model, batch):
    """The embeddings block before and after its LayerNorm, and the model's outputs."""
    seen = {}
    hooks = [
        model.embeddings.LayerNorm.register_forward_pre_hook(
            lambda m, args: seen.__setitem__("sum", args[0].detach().clone())),
        model.embeddings.register_forward_hook(
            lambda m, args, out: seen.__setitem__("embeddings", out.detach().clone())),
    ]
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    for h in hooks:
        h.remove()
    seen.update(last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)
    return {k: v.numpy() for k, v in seen.items()}


def _jax_run(model, batch):
    @nnx.jit
    def run(model, input_ids, attention_mask, token_type_ids):
        out = model(input_ids, attention_mask, token_type_ids)
        return dict(sum=model.embeddings.sum(input_ids, token_type_ids),
                    embeddings=model.embeddings(input_ids, token_type_ids),
                    last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)

    return {k: np.asarray(v) for k, v in run(model, **batch).items()}


@pytest.fixture(scope="module")
def runs(batch, torch_model, jax_model):
    from jaxembed.models import BertModel

    out = {"torch32": _torch_run(torch_model, batch), "jax32": _jax_run(jax_model, batch)}
    out["torch64"] = _torch_run(copy.deepcopy(torch_model).double(), batch)
    with jax.enable_x64(True):
        model64 = BertModel.from_pretrained(MINILM_DIR, param_dtype=jnp.float64,
                                            precision="highest")
        assert model64.encoder.layer[0].output.dense.kernel.get_value().dtype == jnp.float64
        out["jax64"] = _jax_run(model64, batch)
    return out


def test_embeddings_block_is_bit_exact(runs):
    got, want = runs["jax32"]["sum"], runs["torch32"]["sum"]
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("name", TENSORS)
def test_float32_error_against_float64_is_torchs(runs, name):
    """JAX float32's distance from float64 <= K x torch float32's + a floor (tolerances.py)."""
    ref = runs["torch64"][name]
    bound = tol.ENCODER_F32_VS_F64
    for stat, measure in (("rms", _rms), ("max", lambda d: float(np.abs(d).max()))):
        jax_err = measure(runs["jax32"][name] - runs["jax64"][name])
        torch_err = measure(runs["torch32"][name] - ref)
        assert torch_err > 0  # float32 really differs from float64: the comparison means something
        assert jax_err <= bound[stat] * torch_err + bound["floor"], (stat, jax_err, torch_err)


@pytest.mark.parametrize("name", ("sum",) + TENSORS)
def test_float64_runs_agree(runs, name):
    got, want = runs["jax64"][name], runs["torch64"][name]
    assert got.dtype == want.dtype == np.float64
    assert np.abs(got - want).max() <= tol.ENCODER_F64_EPS * np.finfo(np.float64).eps * (
        np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# Fine-tuning the word table through a padded batch
# ---------------------------------------------------------------------------------------------


def _mean_pool_torch(hidden, mask):
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@pytest.mark.parametrize("loss", ["rows", "encoder"])
def test_fine_tuning_the_word_table(torch_model, jax_model, loss):
    """5 SGD steps (lr 0.1) of the word table (padding_idx 0), every other parameter fixed.

    rows: loss on the looked-up rows (bit-exact table after every step, CPU). encoder: a loss
    through the whole encoder (mean-pooled last hidden state), table within
    ``tol.ENCODER_FINETUNE_EPS`` eps * max|W| of torch's after every step.
    """
    from jaxembed.models import mean_pooling

    batch = _tokenize([SENTENCES[0], SENTENCES[2]])  # small, padded: 2 x 9 tokens
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids == 0).any()
    rng = np.random.default_rng(0)
    target = rng.normal(size=ids.shape + (384,) if loss == "rows" else (len(ids), 384))
    target = target.astype(np.float32)

    model_t = copy.deepcopy(torch_model)
    for p in model_t.parameters():
        p.requires_grad_(False)
    weight = model_t.embeddings.word_embeddings.weight.requires_grad_(True)
    assert model_t.embeddings.word_embeddings.padding_idx == 0
    opt_t = torch.optim.SGD([weight], lr=0.1)

    def torch_loss():
        t_ids, t_mask, t_target = (torch.from_numpy(a) for a in (ids, mask, target))
        if loss == "rows":
            return ((model_t.embeddings.word_embeddings(t_ids) - t_target) ** 2).sum()
        hidden = model_t(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        return ((_mean_pool_torch(hidden, t_mask) - t_target) ** 2).mean()

    model_j = nnx.clone(jax_model)
    word = model_j.embeddings.word_embeddings
    assert word.padding_idx == 0 and type(word.embedding) is nnx.Param
    only_word = nnx.All(nnx.Param, nnx.PathContains("word_embeddings"))
    opt_j = nnx.Optimizer(model_j, optax.sgd(0.1), wrt=only_word)

    def jax_loss(model):
        if loss == "rows":
            return jnp.sum((model.embeddings.word_embeddings(ids) - target) ** 2)
        hidden = model(ids, mask).last_hidden_state
        return jnp.mean((mean_pooling(hidden, mask) - target) ** 2)

    @nnx.jit
    def step(model, opt):
        grads = nnx.grad(jax_loss, argnums=nnx.DiffState(0, only_word))(model)
        opt.update(model, grads)

    w0 = weight.detach().numpy().copy()
    looked_up = np.unique(ids[ids != 0])
    for _ in range(5):
        opt_t.zero_grad()
        torch_loss().backward()
        opt_t.step()
        step(model_j, opt_j)
        want = weight.detach().numpy()
        got = np.asarray(word.embedding.get_value())
        if loss == "rows" and tol.GRAD_EXACT:
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
        else:
            scale = F32_EPS * np.abs(want).max()
            assert np.abs(got - want).max() <= tol.ENCODER_FINETUNE_EPS * scale
            # The step is far above that bound: a wrong gradient could not hide under it.
            assert np.abs(want - w0).max() > 1000 * tol.ENCODER_FINETUNE_EPS * scale
        np.testing.assert_array_equal(got[0], w0[0])  # the padding row, in both frameworks
        np.testing.assert_array_equal(want[0], w0[0])
    changed = np.flatnonzero((got != w0).any(axis=1))
    np.testing.assert_array_equal(changed, looked_up)
