"""jaxembed.interop: identical tables and options from torch / arrays / safetensors and back."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as TF
from flax import nnx

import jaxembed
import tolerances as tol
from conftest import MINILM_DIR, TORCH_DEVICE, needs_minilm, ulp_distance
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
    assert not m2.freeze  # interop's default: trainable unless the source says frozen
    with pytest.raises(KeyError, match="the mapping: no tensor 'weight' among its 3"):
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
    with pytest.raises(KeyError, match="emb.safetensors: no tensor 'weight' among its 1"):
        interop.load_safetensors(path)


def test_float64_needs_x64_or_an_explicit_param_dtype():
    w = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.to_nnx(w)
    with pytest.raises(ValueError, match="jax_enable_x64"):  # dtype is the OUTPUT dtype
        interop.to_nnx(w, dtype=jnp.float32)
    m = interop.to_nnx(w, param_dtype=jnp.float32)
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
    with pytest.raises(TypeError, match="colour"):
        interop.to_nnx(np.zeros((3, 2), np.float32), colour="red")
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
    # `import jaxembed` exposes jaxembed.interop; torch, safetensors and transformers stay unloaded.
    code = ("import sys, jaxembed, jaxembed.parity; jaxembed.interop.load_embeddings; "
            "bad = {'torch', 'safetensors', 'transformers'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(bad)}' if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------------------------------------
# Import routes: the same defaults by every door (docs/guides/pretrained.md)
# ---------------------------------------------------------------------------------------------

WORD = "embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A small transformers BertModel saved both ways: model.safetensors and pytorch_model.bin."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=23, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=1)
    model = BertModel(config).eval()
    st_dir = tmp_path_factory.mktemp("tiny-bert-safetensors")
    model.save_pretrained(st_dir)
    bin_dir = tmp_path_factory.mktemp("tiny-bert-bin")
    config.save_pretrained(bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    return model, st_dir, bin_dir


def test_sharded_safetensors_directory(tiny_bert, tmp_path):
    from transformers import BertModel

    model, st_dir, _ = tiny_bert
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="4KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    tables = interop.load_embeddings(sharded)
    assert tables[WORD].padding_idx == 1 and not tables[WORD].freeze
    for key, m in interop.load_embeddings(st_dir).items():
        np.testing.assert_array_equal(tables[key].embedding.get_value(), m.embedding.get_value())
    new = np.asarray(tables[WORD].embedding.get_value()) + 1
    copy = interop.save_checkpoint(sharded, tmp_path / "tuned", {WORD: new})
    tuned = BertModel.from_pretrained(copy, local_files_only=True).state_dict()
    np.testing.assert_array_equal(tuned[WORD].numpy(), new)
    for key, value in model.state_dict().items():
        if key != WORD:
            assert torch.equal(tuned[key], value), key
    with pytest.raises(ValueError, match="pass its model directory"):
        interop.save_checkpoint(sharded / "model.safetensors.index.json", tmp_path / "x", {})


# name -> (load(model, st_dir, bin_dir, **options) -> jaxembed.Embed, padding_idx by default)
NNX_ROUTES = {
    "torch nn.Embedding": (lambda m, s, b, **o: interop.to_nnx(m.embeddings.word_embeddings, **o), 1),
    "torch module + key": (lambda m, s, b, **o: interop.to_nnx(m, key=WORD, **o), 1),
    "model dir (safetensors)": (lambda m, s, b, **o: interop.to_nnx(s, key=WORD, **o), 1),
    "model dir (pytorch_model.bin)": (lambda m, s, b, **o: interop.to_nnx(b, key=WORD, **o), 1),
    "load_embeddings(dir)": (lambda m, s, b, **o: interop.load_embeddings(s, **o)[WORD], 1),
    "load_embeddings(torch module)": (lambda m, s, b, **o: interop.load_embeddings(m, **o)[WORD], 1),
    ".safetensors file": (lambda m, s, b, **o: interop.to_nnx(s / "model.safetensors", key=WORD, **o), None),
    "torch checkpoint file": (lambda m, s, b, **o: interop.to_nnx(b / "pytorch_model.bin", key=WORD, **o), None),
    "load_embeddings(state dict)": (lambda m, s, b, **o: interop.load_embeddings(m.state_dict(), **o)[WORD], None),
    "state dict + key": (lambda m, s, b, **o: interop.to_nnx(m.state_dict(), key=WORD, **o), None),
    "torch tensor": (lambda m, s, b, **o: interop.to_nnx(m.embeddings.word_embeddings.weight, **o), None),
    "numpy array": (lambda m, s, b, **o: interop.to_nnx(interop.table_of(m.embeddings.word_embeddings), **o), None),
}


@pytest.mark.parametrize("route", list(NNX_ROUTES))
def test_every_nnx_route_has_the_same_defaults(tiny_bert, route):
    load, padding_idx = NNX_ROUTES[route]
    model, st_dir, bin_dir = tiny_bert
    want = model.embeddings.word_embeddings.weight.detach().numpy()
    ids = jnp.array([[1, 5, 22]])

    m = load(model, st_dir, bin_dir)  # defaults: trainable, the source's padding row, its dtype
    assert type(m.embedding) is nnx.Param and not m.freeze
    assert m.padding_idx == padding_idx
    assert m.embedding.get_value().dtype == jnp.float32 and m(ids).dtype == jnp.float32
    np.testing.assert_array_equal(m.embedding.get_value(), want)

    m = load(model, st_dir, bin_dir, freeze=True, dtype=jnp.bfloat16, param_dtype=jnp.float16)
    assert isinstance(m.embedding, jaxembed.FrozenParam) and m.padding_idx == padding_idx
    assert m.embedding.get_value().dtype == jnp.float16  # param_dtype: the table's dtype
    assert m(ids).dtype == jnp.bfloat16  # dtype: the output dtype, as in the modules
    np.testing.assert_array_equal(m.embedding.get_value(), want.astype(np.float16))

    if "load_embeddings" not in route:  # (load_embeddings refuses one padding_idx for all tables)
        assert load(model, st_dir, bin_dir, padding_idx=3).padding_idx == 3  # keywords override


LINEN_ROUTES = {
    "to_linen(torch nn.Embedding)": (lambda m, s, **o: interop.to_linen(m.embeddings.word_embeddings, **o), 1),
    "to_linen(model dir)": (lambda m, s, **o: interop.to_linen(s, key=WORD, **o), 1),
    "load_linen_embeddings(dir)": (lambda m, s, **o: interop.load_linen_embeddings(s, **o)[WORD], 1),
    "to_linen(state dict)": (lambda m, s, **o: interop.to_linen(m.state_dict(), key=WORD, **o), None),
}


@pytest.mark.parametrize("route", list(LINEN_ROUTES))
def test_every_linen_route_has_the_same_defaults(tiny_bert, route):
    load, padding_idx = LINEN_ROUTES[route]
    model, st_dir, _ = tiny_bert
    ids = jnp.array([[1, 5, 22]])
    module, variables = load(model, st_dir)
    assert not module.freeze and set(variables) == {"params"}
    assert module._padding_idx == padding_idx
    assert module.apply(variables, ids).dtype == jnp.float32
    np.testing.assert_array_equal(variables["params"]["embedding"],
                                  model.embeddings.word_embeddings.weight.detach().numpy())
    module, variables = load(model, st_dir, freeze=True, dtype=jnp.bfloat16, param_dtype=jnp.float16)
    assert module.freeze and set(variables) == {jaxembed.linen.FROZEN_COLLECTION}
    assert variables[jaxembed.linen.FROZEN_COLLECTION]["embedding"].dtype == jnp.float16
    assert module.apply(variables, ids).dtype == jnp.bfloat16


def test_source_says_frozen_and_from_pretrained_keeps_torchs_default():
    frozen = torch.nn.Embedding(5, 3, padding_idx=2, _freeze=True)
    assert interop.to_nnx(frozen).freeze and interop.to_linen(frozen)[0].freeze
    assert not interop.to_nnx(frozen, freeze=False).freeze  # the caller decides
    assert interop.load_embeddings(torch.nn.Sequential(frozen))["0.weight"].freeze
    # Integer tables cannot require gradients (torch's rule): frozen unless asked otherwise.
    assert interop.to_nnx(np.arange(6, dtype=np.int32).reshape(3, 2)).freeze
    # torch's own API keeps torch's default: frozen.
    w = np.ones((3, 2), np.float32)
    assert jaxembed.Embed.from_pretrained(w).freeze
    assert jaxembed.linen.Embed.from_pretrained(w).freeze


def test_module_options_pass_through():
    w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    m = interop.to_nnx(w, sparse=True, max_norm=1.0, embedding_metadata={"out_sharding": None})
    assert m.sparse and m.max_norm == 1.0 and isinstance(m.embedding, jaxembed.sparse.SparseParam)
    sparse_torch = torch.nn.Embedding(6, 4, sparse=True)
    assert interop.to_nnx(sparse_torch).sparse  # torch's sparse=True: jaxembed's sparse table
    assert interop.to_torch(interop.to_nnx(sparse_torch)).sparse


def test_load_embeddings_from_a_torch_module_keeps_each_modules_options():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(10, 4, padding_idx=1, max_norm=2.0)
            self.pos = torch.nn.Embedding(8, 4, _freeze=True)
            self.bag = torch.nn.EmbeddingBag(7, 4, mode="max", padding_idx=0)
            self.head = torch.nn.Linear(4, 2)

    tables = interop.load_embeddings(Model())
    assert list(tables) == ["tok.weight", "pos.weight", "bag.weight"]
    tok, pos, bag = tables.values()
    assert (tok.padding_idx, tok.max_norm, tok.freeze) == (1, 2.0, False)
    assert pos.freeze and pos.padding_idx is None
    assert isinstance(bag, jaxembed.EmbeddingBag) and bag.mode == "max" and bag.padding_idx == 0
    linen = interop.load_linen_embeddings(Model(), dtype=jnp.bfloat16)
    assert isinstance(linen["bag.weight"][0], jaxembed.linen.EmbeddingBag)
    assert all(module.dtype == jnp.bfloat16 for module, _ in linen.values())
    with pytest.raises(TypeError, match="padding_idx differs per table"):
        interop.load_embeddings(Model(), padding_idx=0)


# ---------------------------------------------------------------------------------------------
# 64-bit tables and path errors (issue 11, defects 7 and 17)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [np.asarray, torch.from_numpy])
def test_int64_table_is_refused_never_truncated(make, tmp_path):
    big = np.array([[2**40, 1], [-(2**35), 3], [5, 2**31]], np.int64)
    with pytest.raises(ValueError, match="int64, which JAX would silently narrow to int32 because "
                       r"jax_enable_x64 is off.*param_dtype=jnp.int32 \(refused if a value"):
        interop.to_nnx(make(big))
    with pytest.raises(ValueError, match=r"do not fit param_dtype=int32"):
        interop.to_nnx(make(big), param_dtype=jnp.int32)
    small = np.arange(6, dtype=np.int64).reshape(3, 2)
    m = interop.to_nnx(make(small), param_dtype=jnp.int32)  # an explicit, lossless conversion
    np.testing.assert_array_equal(m.embedding.get_value(), small)
    path = tmp_path / "ints.safetensors"
    interop.save_safetensors(path, big)
    with pytest.raises(ValueError, match="ints.safetensors \\[weight\\]: the table has dtype int64"):
        interop.to_linen(path)


def test_int64_table_is_kept_under_x64(x64):
    big = np.array([[2**40, 1], [-(2**35), 3], [5, 2**31]], np.int64)
    m = interop.to_nnx(torch.from_numpy(big))
    assert m.embedding.get_value().dtype == jnp.int64
    np.testing.assert_array_equal(m.embedding.get_value(), big)
    np.testing.assert_array_equal(m(jnp.array([0, 2])), big[[0, 2]])


def test_path_errors_name_the_path_and_what_was_expected(tmp_path):
    expected = "model directory, a .safetensors file or a torch checkpoint"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: a model directory holds one of "
                       "model.safetensors, model.safetensors.index.json, pytorch_model.bin"):
        interop.to_nnx(tmp_path, key="weight")
    with pytest.raises(FileNotFoundError, match=f"missing.safetensors: no such file.*{expected}"):
        interop.to_nnx(tmp_path / "missing.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt.safetensors: not a valid safetensors file"):
        interop.to_nnx(tmp_path / "corrupt.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        interop.to_nnx(tmp_path / "junk.pt")
    # What a user passes is accepted: a torch checkpoint, a Lightning-style nested one, a dir.
    w = torch.randn(5, 3)
    torch.save({"emb.weight": w}, tmp_path / "ckpt.pt")
    torch.save({"state_dict": {"emb.weight": w}, "epoch": 3}, tmp_path / "lightning.ckpt")
    for path in ("ckpt.pt", "lightning.ckpt"):
        np.testing.assert_array_equal(interop.table_of(tmp_path / path, "emb.weight"), w.numpy())


def test_wrong_key_gives_the_closest_names_briefly(tiny_bert):
    _, st_dir, bin_dir = tiny_bert
    for source in (st_dir, bin_dir):
        with pytest.raises(KeyError) as info:
            interop.to_nnx(source, key="embeddings.word_embedding.weight")
        message = info.value.args[0]
        assert f"{source}" in message and f"'{WORD}'" in message and "closest" in message
        assert len(message) < 300, message


# ---------------------------------------------------------------------------------------------
# The offline MiniLM, and the way back into a checkpoint
# ---------------------------------------------------------------------------------------------


@needs_minilm
def test_load_embeddings_of_minilm():
    from safetensors.numpy import load_file

    tables = interop.load_embeddings(MINILM_DIR)
    assert sorted(tables) == ["embeddings.position_embeddings.weight",
                              "embeddings.token_type_embeddings.weight", WORD]
    stored = load_file(str(MINILM_DIR / "model.safetensors"))
    for key, m in tables.items():
        assert type(m.embedding) is nnx.Param  # trainable
        assert m.padding_idx == (0 if key == WORD else None)
        assert _bits(m.embedding.get_value()).tobytes() == _bits(stored[key]).tobytes()
    assert tables[WORD].embedding.get_value().shape == (30522, 384)


def _sgd_steps(m, ids, n=3):
    """A few SGD steps on the looked-up rows, as fine-tuning would."""
    opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
    for _ in range(n):
        grads = nnx.grad(lambda mod: jnp.sum(mod(ids) ** 2))(m)
        opt.update(m, grads)
    return m


@needs_minilm
def test_fine_tuned_table_goes_back_into_a_copy_that_transformers_loads(tmp_path):
    from transformers import BertModel

    word = _sgd_steps(interop.to_nnx(MINILM_DIR, key=WORD), jnp.array([[101, 4937, 102, 0]]))
    new = np.asarray(word.embedding.get_value())
    copy = interop.save_checkpoint(MINILM_DIR, tmp_path / "tuned", {WORD: word})
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in MINILM_DIR.iterdir())
    # Every byte outside the table is the original's.
    old_bytes = (MINILM_DIR / "model.safetensors").read_bytes()
    new_bytes = (copy / "model.safetensors").read_bytes()
    n = int.from_bytes(old_bytes[:8], "little")  # the safetensors format: length, JSON header
    begin, end = (8 + n + o for o in json.loads(old_bytes[8:8 + n])[WORD]["data_offsets"])
    assert len(old_bytes) == len(new_bytes)
    assert old_bytes[:begin] == new_bytes[:begin] and old_bytes[end:] == new_bytes[end:]

    original = BertModel.from_pretrained(MINILM_DIR, local_files_only=True).state_dict()
    tuned = BertModel.from_pretrained(copy, local_files_only=True).state_dict()
    np.testing.assert_array_equal(tuned[WORD].numpy(), new)
    changed = np.flatnonzero((new != original[WORD].numpy()).any(axis=1))
    assert changed.tolist() == [101, 102, 4937]  # the looked-up rows; padding row 0 is not
    for key, value in original.items():
        if key != WORD:
            assert torch.equal(tuned[key], value), key


def test_fine_tuned_table_goes_back_into_a_torch_checkpoint(tiny_bert, tmp_path):
    from transformers import BertModel

    model, _, bin_dir = tiny_bert
    tables = interop.load_embeddings(bin_dir)
    tables[WORD] = _sgd_steps(tables[WORD], jnp.array([2, 5, 5, 1]))
    copy = interop.save_checkpoint(bin_dir, tmp_path / "tuned", tables)
    tuned = BertModel.from_pretrained(copy, local_files_only=True).state_dict()
    np.testing.assert_array_equal(tuned[WORD].numpy(), tables[WORD].embedding.get_value())
    for key, value in model.state_dict().items():
        if key != WORD:
            assert torch.equal(tuned[key], value), key

    with pytest.raises(FileExistsError, match="tuned: exists"):
        interop.save_checkpoint(bin_dir, copy, tables)
    half = interop.to_nnx(bin_dir, key=WORD, param_dtype=jnp.float16)
    with pytest.raises(ValueError, match=r"stores float32 \(23, 16\), the new table is float16"):
        interop.save_checkpoint(bin_dir, tmp_path / "half", {WORD: half})
    with pytest.raises(KeyError, match="closest"):
        interop.save_checkpoint(bin_dir, tmp_path / "typo", {"embeddings.word_embedding.weight": half})
