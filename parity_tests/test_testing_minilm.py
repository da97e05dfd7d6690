"""jaxembed.testing's showcase: ``jaxembed.models.BertModel`` (the offline MiniLM-L6) against
transformers' ``BertModel`` on the same weights, and five planted port bugs.

The correct port passes forward (every module's output), all 103 gradients and 5 AdamW steps,
with every parameter mapped automatically (no hand entry). Each planted bug fails, and the
report's first failure names the stage and the tensor where the bug lives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxembed.testing as jt
from conftest import MINILM_DIR, needs_minilm

pytestmark = needs_minilm

SENTENCES = ["The cat sat on the mat.", "A king and a queen.", "Hello world",
             "Embeddings map token ids to vectors in JAX and torch alike."]


@pytest.fixture(scope="module")
def batch():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    ids, mask, types = (np.array([getattr(e, a) for e in encodings])
                        for a in ("ids", "attention_mask", "type_ids"))
    assert (ids == 0).any()  # padded: the padding row's gradient is part of the test
    return ids, mask, types


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(MINILM_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def port():
    from jaxembed.models import BertModel

    return BertModel.from_pretrained(MINILM_DIR)


def test_every_parameter_maps_automatically(hf, port):
    pmap = jt.param_map(hf, port)
    assert not pmap.problems and not pmap.ignored
    assert len(pmap.entries) == 103 and {e.how for e in pmap.entries} == {"auto"}
    kernels = [e for e in pmap.entries if e.jax_name.endswith(".kernel")]
    assert len(kernels) == 37 and {e.layout for e in kernels} == {jt.TRANSPOSE}
    assert pmap.entry("embeddings.word_embeddings.weight").jax_name == (
        "embeddings.word_embeddings.embedding")
    assert pmap.entry("encoder.layer.5.output.LayerNorm.weight").jax_name == (
        "encoder.layer.5.output.LayerNorm.scale")


def test_correct_port_passes(hf, port, batch):
    """Forward, every gradient and 5 AdamW steps (lr 1e-4, a fine-tuning rate)."""
    report = jt.compare(hf, port, batch, optimizer=jt.adamw(1e-4), steps=5)
    assert report.passed, report
    assert report.stages == ["forward", "gradients"] + [f"step {k}" for k in range(1, 6)]
    assert len([r for r in report.rows if r.stage == "gradients"]) == 103
    # every mapped module's output was compared, the embeddings' three lookups bit-exact
    forward = {r.name: r for r in report.rows if r.stage == "forward"}
    for table in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
        assert forward[f"embeddings.{table}"].verdict.result == "bit-exact"
    assert "encoder.layer.5.attention.self" in forward and "pooler" in forward
    # no port bug: without float32 rounding the two models' gradients agree to ~1e-12 (max
    # |g| ~ 700). (Adam's steps do not: a gradient within float64 rounding of zero steps by
    # about lr either way in float64 too.)
    assert max(r.verdict.f64_gap for r in report.rows if r.stage == "gradients") < 1e-10
    print(f"\nMiniLM timings (s): {report.timings}")


def _first(report):
    return report.first_failure.stage, report.first_failure.name


def test_planted_missing_kernel_transpose(hf, port, batch):
    """The port's loader forgot to transpose one (square) kernel: the weights stage names it."""
    bad = nnx.clone(port)
    query = bad.encoder.layer[0].attention.self.query
    query.kernel.set_value(query.kernel.get_value().T)
    report = jt.compare(hf, bad, batch, load_weights=False, gradients=False, jax_float64=False)
    assert _first(report) == ("weights", "encoder.layer.0.attention.self.query.weight"), report
    assert [r.name for r in report.failures if r.stage == "weights"] == [
        "encoder.layer.0.attention.self.query.weight"]


def test_planted_layernorm_epsilon(hf, port, batch):
    """A port built with LayerNorm epsilon 1e-5 (instead of 1e-12), torch's weights copied in."""
    from jaxembed.models import BertModel

    bad = BertModel(dataclasses.replace(port.config, layer_norm_eps=1e-5), rngs=nnx.Rngs(0))
    report = jt.compare(hf, bad, batch, gradients=False, jax_float64=False)
    assert _first(report) == ("forward", "embeddings.LayerNorm"), report


def test_planted_tanh_gelu(hf, port, batch, monkeypatch):
    from jaxembed.models import bert

    monkeypatch.setattr(bert.BertIntermediate, "__call__",
                        lambda self, x: jax.nn.gelu(self.dense(x), approximate=True))
    report = jt.compare(hf, port, batch, gradients=False, jax_float64=False)
    assert _first(report) == ("forward", "encoder.layer.0.intermediate"), report
    # the dense layer before the activation still agrees
    assert report.row("forward", "encoder.layer.0.intermediate.dense").passed


def test_planted_padding_mask_dropped(hf, port, batch):
    """The word table without padding_idx: the forward is right, the padding row's gradient
    is not."""
    bad = nnx.clone(port)
    bad.embeddings.word_embeddings.padding_idx = None
    report = jt.compare(hf, bad, batch)
    assert _first(report) == ("gradients", "embeddings.word_embeddings.weight"), report
    assert [r.name for r in report.failures] == ["embeddings.word_embeddings.weight"]


def test_planted_position_ids_off_by_one(hf, port, batch, monkeypatch):
    from jaxembed.models import bert

    def shifted(self, input_ids, token_type_ids):
        positions = jnp.arange(1, input_ids.shape[-1] + 1)  # the bug: 1..L instead of 0..L-1
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return x + self.position_embeddings(positions)

    monkeypatch.setattr(bert.BertEmbeddings, "sum", shifted)
    report = jt.compare(hf, port, batch, gradients=False, jax_float64=False)
    assert _first(report) == ("forward", "embeddings.position_embeddings"), report
