"""jaxembed.interop: identical tables and options from torch / arrays / safetensors and back."""

from __future__ import annotations

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from flax import nnx

import jaxembed
import tolerances as tol
from conftest import TORCH_DEVICE, ulp_distance
from jaxembed import interop
from jaxembed._src.tools.parity import grad_tolerance, within

OPTIONS = dict(padding_idx=-2, max_norm=1.5, norm_type=3.0, scale_grad_by_freq=True)
TORCH_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _bits(a):
    a = np.asarray(a)
    return a.view({2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize])


def _torch_bits(t):
    return interop.table_of(t).view({2: np.int16, 4: np.int32, 8: np.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("freeze", [True, False])
def test_torch_module_to_nnx_and_back(dtype, freeze):
    emb = torch.nn.Embedding(12, 5, dtype=dtype, _freeze=freeze, **OPTIONS).to(TORCH_DEVICE)
    m = interop.to_nnx(emb)
    assert isinstance(m, jaxembed.Embed)
    assert (m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.freeze) == (
        10, 1.5, 3.0, True, freeze)
    assert isinstance(m.embedding, jaxembed.FrozenParam) == freeze
    np.testing.assert_array_equal(_bits(m.embedding.get_value()), _torch_bits(emb.weight))

    back = interop.to_torch(m, device=TORCH_DEVICE)
    assert isinstance(back, torch.nn.Embedding)
    for k in ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq"):
        assert getattr(back, k) == getattr(emb, k), k
    assert back.weight.requires_grad == (not freeze)
    assert back.weight.dtype == dtype
    assert torch.equal(back.weight, emb.weight)
    assert back.weight.data_ptr() != emb.weight.data_ptr()  # a copy, not shared storage


@pytest.mark.parametrize("freeze", [True, False])
def test_torch_module_to_linen_and_back(freeze):
    emb = torch.nn.Embedding(9, 4, _freeze=freeze, **OPTIONS)
    module, variables = interop.to_linen(emb)
    assert isinstance(module, jaxembed.linen.Embed) and module.freeze == freeze
    collection = jaxembed.linen.FROZEN_COLLECTION if freeze else "params"
    np.testing.assert_array_equal(variables[collection]["embedding"], emb.weight.detach())
    # The module computes what the torch module computes (max_norm included).
    w0 = emb.weight.detach().clone()  # torch renorms emb.weight in place below
    ids = np.array([[1, 7, 7], [3, 0, 8]])
    want = emb(torch.from_numpy(ids)).detach().numpy()
    got, _ = module.apply(variables, jnp.asarray(ids), mutable=[collection])
    assert ulp_distance(np.asarray(got), want) <= tol.RENORM_ULP["float32"]

    back = interop.to_torch(module, variables)
    assert back.padding_idx == 7 and back.max_norm == 1.5 and back.norm_type == 3.0
    assert back.scale_grad_by_freq and back.weight.requires_grad == (not freeze)
    assert torch.equal(back.weight, w0)
    # The collection alone is accepted too.
    assert torch.equal(interop.to_torch(module, variables[collection]).weight, w0)


def test_state_dict_entry_keeps_bits_and_takes_options():
    model = torch.nn.Sequential(torch.nn.Embedding(7, 3, padding_idx=0), torch.nn.Linear(3, 2))
    sd = model.state_dict()
    m = interop.to_nnx(sd, key="0.weight", padding_idx=0, freeze=False)
    np.testing.assert_array_equal(m.embedding.get_value(), sd["0.weight"].numpy())
    assert m.padding_idx == 0 and not m.freeze
    np.testing.assert_array_equal(m.embedding.get_value()[0], 0)  # torch's zeroed row, kept
    m2 = interop.to_nnx(sd["0.weight"])  # the entry itself
    assert m2.freeze  # from_pretrained's default, as torch
    with pytest.raises(KeyError, match="'weight' not in the mapping"):
        interop.to_nnx(sd)


@pytest.mark.parametrize("make", [np.asarray, jnp.asarray])
def test_array_sources(make):
    w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    m = interop.to_nnx(make(w), padding_idx=-1, max_norm=2.0)
    assert m.padding_idx == 5 and m.max_norm == 2.0
    np.testing.assert_array_equal(m.embedding.get_value(), w)
    np.testing.assert_array_equal(m.embedding.get_value()[5], w[5])  # pretrained: not zeroed


def test_safetensors_round_trip(tmp_path):
    emb = torch.nn.Embedding(10, 6, padding_idx=3, dtype=torch.bfloat16)
    path = tmp_path / "emb.safetensors"
    interop.save_safetensors(path, emb, key="tok.weight")
    m = interop.to_nnx(path, key="tok.weight", padding_idx=3)
    assert m.embedding.get_value().dtype == jnp.bfloat16
    np.testing.assert_array_equal(_bits(m.embedding.get_value()), _torch_bits(emb.weight))
    # And from a jaxembed module, through the file, into a torch module.
    interop.save_safetensors(tmp_path / "m.safetensors", m)
    back = interop.to_torch(interop.to_nnx(str(tmp_path / "m.safetensors"), padding_idx=3))
    assert torch.equal(back.weight, emb.weight) and back.padding_idx == 3
    with pytest.raises(KeyError, match="'weight' not in"):
        interop.load_safetensors(path)


def test_float64_needs_x64_or_an_explicit_dtype():
    w = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.to_nnx(w)
    m = interop.to_nnx(w, dtype=jnp.float32)
    np.testing.assert_array_equal(m.embedding.get_value(), w.astype(np.float32))


def test_float64_under_x64(x64):
    emb = torch.nn.Embedding(5, 3, dtype=torch.float64, max_norm=1.0)
    m = interop.to_nnx(emb)
    assert m.embedding.get_value().dtype == jnp.float64
    ids = np.array([0, 4, 4])
    want = emb(torch.from_numpy(ids)).detach().numpy()  # torch renorms in place: compare after
    got = np.asarray(m(jnp.asarray(ids)))
    assert ulp_distance(got, want) <= tol.RENORM_ULP["float64"]
    assert ulp_distance(np.asarray(m.embedding.get_value()), emb.weight.detach().numpy()) <= (
        tol.RENORM_ULP["float64"])


def test_gradients_agree_after_loading():
    # The loaded module's table gradient is torch's (padding and frequency scaling kept).
    emb = torch.nn.Embedding(8, 5, padding_idx=1, scale_grad_by_freq=True)
    m = interop.to_nnx(emb, freeze=False)
    ids = np.array([[1, 2, 2], [7, 1, 2]])
    x = np.random.default_rng(0).normal(size=ids.shape + (5,)).astype(np.float32)
    (emb(torch.from_numpy(ids)) * torch.from_numpy(x)).sum().backward()
    grads = nnx.grad(lambda mod: jnp.sum(mod(jnp.asarray(ids)) * x))(m)
    got = np.asarray(grads["embedding"].get_value())
    counts = np.bincount(ids.reshape(-1), minlength=8)
    assert within(got, emb.weight.grad.numpy(), grad_tolerance(tol.BACKEND, x, ids, 8, counts))
    assert not got[1].any()


def test_bad_sources_and_options():
    with pytest.raises(TypeError, match="unknown option"):
        interop.to_nnx(np.zeros((3, 2), np.float32), sparse=True)
    with pytest.raises(TypeError, match="expected a torch.nn.Embedding"):
        interop.to_nnx([[1.0, 2.0]])
    with pytest.raises(AssertionError, match="2-dimensional"):
        interop.to_nnx(np.zeros((3,), np.float32))
    module, _ = interop.to_linen(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="variables"):
        interop.to_torch(module)


def test_options_from_torch_match_functional_semantics():
    # The options read from torch drive the same functional rules: padding_idx=-2 is row V-2.
    emb = torch.nn.Embedding(6, 4, padding_idx=-2, max_norm=0.7, norm_type=math.inf)
    w0 = emb.weight.detach().clone()
    m = interop.to_nnx(emb)
    ids = np.array([4, 0, 4])
    torch_out = TF.embedding(torch.from_numpy(ids), w0.clone(), padding_idx=4, max_norm=0.7,
                             norm_type=math.inf).numpy()
    assert ulp_distance(np.asarray(m(jnp.asarray(ids))), torch_out) <= tol.RENORM_ULP["float32"]


def test_import_does_not_import_torch():
    code = "import sys, jaxembed.interop, jaxembed.parity; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
