"""jaxembed.testing on small ports: the parameter map, the float64 criterion, the report, and
planted port bugs that must fail naming the right tensor and stage.

Models: an MLP over a jaxembed table (NNX and Linen), and a recommender (EmbeddingBag + MLP),
dense with Adam and sparse with torch's sparse SGD against jaxembed's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxembed
import jaxembed.testing as jt

V, D, H = 40, 8, 16


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------


class TorchMLP(torch.nn.Module):
    def __init__(self, eps=1e-5):
        super().__init__()
        self.embed = torch.nn.Embedding(V, D, padding_idx=0)
        self.fc1 = torch.nn.Linear(D, H)
        self.norm = torch.nn.LayerNorm(H, eps=eps)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(H, H)
        self.head = torch.nn.Linear(H, 3)

    def forward(self, ids):
        x = self.embed(ids).sum(1)
        return self.head(self.fc2(self.act(self.norm(self.fc1(x)))))


class Gelu(nnx.Module):
    def __init__(self, approximate=False):
        self.approximate = approximate

    def __call__(self, x):
        return jax.nn.gelu(x, approximate=self.approximate)


class JaxMLP(nnx.Module):
    """A correct port of TorchMLP, with the planted bugs as options."""

    def __init__(self, *, eps=1e-5, approximate=False, padding_idx=0, rngs):
        self.embed = jaxembed.Embed(V, D, padding_idx=padding_idx, rngs=rngs)
        self.fc1 = nnx.Linear(D, H, rngs=rngs)
        self.norm = nnx.LayerNorm(H, epsilon=eps, rngs=rngs)
        self.act = Gelu(approximate)
        self.fc2 = nnx.Linear(H, H, rngs=rngs)
        self.head = nnx.Linear(H, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids).sum(1)
        return self.head(self.fc2(self.act(self.norm(self.fc1(x)))))


def _ids(seed=0, shape=(6, 5)):
    ids = np.random.default_rng(seed).integers(1, V, shape)
    ids[:, -2:] = 0  # padding positions
    return ids


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return TorchMLP()


# ---------------------------------------------------------------------------------------------
# Import, map, copy
# ---------------------------------------------------------------------------------------------


def test_importable_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import jaxembed.testing as jt\n"
            "assert 'transformers' not in sys.modules\n"
            "print(jt.judge([1.0], [1.0], [1.0]).result)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "bit-exact"


def test_map_is_automatic_with_layouts(mlp):
    pmap = jt.param_map(mlp, JaxMLP(rngs=nnx.Rngs(0)))
    assert not pmap.problems and not pmap.ignored
    got = {e.torch_name: (e.jax_name, e.layout.name, e.how) for e in pmap.entries}
    assert got == {
        "embed.weight": ("embed.embedding", "identity", "auto"),
        "fc1.weight": ("fc1.kernel", "transpose", "auto"),
        "fc1.bias": ("fc1.bias", "identity", "auto"),
        "norm.weight": ("norm.scale", "identity", "auto"),
        "norm.bias": ("norm.bias", "identity", "auto"),
        "fc2.weight": ("fc2.kernel", "transpose", "auto"),
        "fc2.bias": ("fc2.bias", "identity", "auto"),
        "head.weight": ("head.kernel", "transpose", "auto"),
        "head.bias": ("head.bias", "identity", "auto"),
    }
    # every module with a JAX counterpart has its output compared (the activation included)
    assert pmap.modules == {n: n for n in ("embed", "fc1", "norm", "act", "fc2", "head")}
    assert "9 tensors mapped (nnx)" in str(pmap) and "fc1.kernel" in pmap.table()


def test_copy_weights_nnx_and_linen(mlp):
    model = jt.copy_weights(mlp, JaxMLP(rngs=nnx.Rngs(1)))
    np.testing.assert_array_equal(model.fc1.kernel.get_value(), mlp.fc1.weight.detach().numpy().T)
    np.testing.assert_array_equal(model.embed.embedding.get_value(),
                                  mlp.embed.weight.detach().numpy())
    module, variables = LinenMLP(), LinenMLP().init(jax.random.key(0), jnp.asarray(_ids()))
    new = jt.copy_weights(mlp, (module, variables))
    np.testing.assert_array_equal(new["params"]["Dense_2"]["kernel"],
                                  mlp.head.weight.detach().numpy().T)
    assert variables["params"]["Dense_2"]["kernel"] is not new["params"]["Dense_2"]["kernel"]


def test_map_reports_every_problem_by_name():
    class TorchExtra(TorchMLP):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))  # no JAX counterpart

    class JaxWrong(JaxMLP):
        def __init__(self, rngs):
            super().__init__(rngs=rngs)
            self.fc2 = nnx.Linear(H, H + 1, rngs=rngs)  # shape mismatch
            self.embed = jaxembed.Embed(V, D, padding_idx=0, freeze=True, rngs=rngs)  # frozen
            self.extra = nnx.Param(jnp.zeros(2))  # no torch counterpart

    pmap = jt.param_map(TorchExtra(), JaxWrong(nnx.Rngs(0)))
    text = "\n".join(pmap.problems)
    assert "torch scale: no JAX leaf at this path" in text
    assert "torch fc2.weight: shape (16, 16) is (16, 16) after transpose, JAX fc2.kernel has " \
           "(16, 17)" in text
    assert "torch fc2.bias: shape (16,), JAX fc2.bias has (17,)" in text
    assert "torch embed.weight: trainable in torch, frozen (not trained) in JAX" in text
    assert "JAX extra: no torch tensor maps here" in text
    with pytest.raises(ValueError, match="5 problem"):
        pmap.check()
    with pytest.raises(ValueError, match="torch scale"):
        jt.compare(TorchExtra(), JaxWrong(nnx.Rngs(0)), _ids())
    # overrides: a hand entry, a deliberate omission on each side
    pmap = jt.param_map(TorchExtra(), JaxMLP(rngs=nnx.Rngs(0)),
                        overrides={"scale": None})
    assert not pmap.problems and pmap.ignored[0][0] == "scale"


def test_overrides_rename_modules_and_hand_entries():
    class JaxRenamed(nnx.Module):
        def __init__(self, rngs):
            self.tok = jaxembed.Embed(V, D, padding_idx=0, rngs=rngs)
            self.mlp = nnx.Sequential(nnx.Linear(D, H, rngs=rngs), nnx.LayerNorm(H, rngs=rngs),
                                      Gelu(), nnx.Linear(H, H, rngs=rngs))
            self.out = nnx.Dict(w=nnx.Param(jnp.zeros((H, 3))), b=nnx.Param(jnp.zeros(3)))

    torch.manual_seed(0)
    tm = TorchMLP()
    overrides = {"embed": "tok", "fc1": "mlp.0", "norm": "mlp.1", "act": "mlp.2",
                 "fc2": "mlp.3", "head.weight": ("out.w", "transpose"), "head.bias": "out.b"}
    pmap = jt.param_map(tm, JaxRenamed(nnx.Rngs(0)), overrides=overrides)
    assert not pmap.problems
    by = {e.torch_name: e for e in pmap.entries}
    assert by["fc1.weight"].jax_name == "mlp.layers.0.kernel"  # nnx.Sequential's level skipped
    assert by["head.weight"].how == "hand" and by["head.weight"].layout is jt.TRANSPOSE
    assert pmap.modules["norm"] == "mlp.layers.1"
    with pytest.raises(KeyError, match="closest: out.w"):
        jt.param_map(tm, JaxRenamed(nnx.Rngs(0)), overrides={**overrides, "head.bias": "out.x"})


# ---------------------------------------------------------------------------------------------
# The criterion
# ---------------------------------------------------------------------------------------------


def test_judge():
    ref = np.array([1.0, -2.0, 3.0], np.float64) / 3
    torch32 = ref.astype(np.float32)
    eps = np.finfo(np.float32).eps
    assert jt.judge(torch32, torch32, ref).result == "bit-exact"
    # rounding-sized differences pass; the floor is 4 ulp of max|ref| = 1
    close = torch32 + np.float32(3 * eps)
    v = jt.judge(close, torch32, ref)
    assert v.result == "pass" and v.bound == pytest.approx(4 * eps * 1.0 + 2 * v.torch_error,
                                                           rel=1e-6)
    far = torch32 + np.float32(6 * eps)
    assert jt.judge(far, torch32, ref).result == "FAIL"
    # k x torch's own error: a torch far from float64 lets JAX be as far
    torch_far = torch32 + np.float32(1e-4)
    assert jt.judge(torch32 + np.float32(1.9e-4), torch_far, ref).passed
    assert not jt.judge(torch32 + np.float32(2.1e-4), torch_far, ref).passed
    # without a reference: the documented fallback bound on max|jax - torch|
    v = jt.judge(torch32 + np.float32(60 * eps), torch32, None)
    assert v.method == "fallback" and v.passed
    assert not jt.judge(torch32 + np.float32(70 * eps), torch32, None).passed
    # NaN where torch has a number, shapes, integers
    assert jt.judge(np.float32([np.nan, 1, 1]), np.float32([0, 1, 1]), ref).result == "FAIL"
    assert "shape" in jt.judge(np.zeros(2), np.zeros(3), None).note
    assert jt.judge(np.int32([1, 2]), np.int64([1, 2])).result == "bit-exact"
    assert jt.judge(np.int32([1, 2]), np.int64([1, 3])).result == "FAIL"
    with pytest.raises(ValueError, match="Criterion.k"):
        jt.Criterion(k=-1)


# ---------------------------------------------------------------------------------------------
# A correct port passes; planted bugs fail naming the tensor and the stage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", [
    jt.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    jt.adamw(1e-2),
], ids=lambda o: o.label)
def test_correct_port_passes(mlp, optimizer):
    report = jt.compare(mlp, JaxMLP(rngs=nnx.Rngs(0)), _ids(), optimizer=optimizer, steps=3)
    assert report.passed, report
    assert report.stages == ["forward", "gradients", "step 1", "step 2", "step 3"]
    assert report.row("forward", "embed").verdict.result == "bit-exact"  # a gather
    assert report.row("gradients", "embed.weight").verdict.torch_error is not None
    assert report.reference.startswith("torch float64 run")
    # the JAX float64 run agrees with torch's to float64 rounding: no port bug
    assert max(r.verdict.f64_gap for r in report.rows) < 1e-12
    assert report.row("step 3", "head.weight").verdict.bound > 0


@pytest.mark.parametrize("bug, stage, tensor", [
    (dict(eps=1e-3), "forward", "norm"),
    (dict(approximate=True), "forward", "act"),
    (dict(padding_idx=None), "gradients", "embed.weight"),
], ids=["layernorm-eps", "tanh-gelu", "padding-mask-dropped"])
def test_planted_bug_named(mlp, bug, stage, tensor):
    report = jt.compare(mlp, JaxMLP(**bug, rngs=nnx.Rngs(0)), _ids(), jax_float64=False)
    assert not report.passed
    first = report.first_failure
    assert (first.stage, first.name) == (stage, tensor), report
    assert f"first failure at stage {stage!r}, tensor {tensor!r}" in report.verdict_line()
    if stage == "gradients":  # the forward is untouched by a gradient-only bug
        assert all(r.passed for r in report.rows if r.stage == "forward")


def test_missing_transpose_named(mlp):
    # In the map: a hand entry without the transpose (fc2 is square, so the shapes agree).
    report = jt.compare(mlp, JaxMLP(rngs=nnx.Rngs(0)), _ids(), jax_float64=False,
                        overrides={"fc2.weight": ("fc2.kernel", "identity")})
    assert (report.first_failure.stage, report.first_failure.name) == ("forward", "fc2")
    # In the port's own loading, checked by comparing its weights (load_weights=False).
    port = jt.copy_weights(mlp, JaxMLP(rngs=nnx.Rngs(0)))
    port.fc2.kernel.set_value(port.fc2.kernel.get_value().T)  # the loader forgot the transpose
    report = jt.compare(mlp, port, _ids(), load_weights=False, jax_float64=False)
    first = report.first_failure
    assert (first.stage, first.name, first.jax_name) == ("weights", "fc2.weight", "fc2.kernel")
    assert [r.name for r in report.rows if r.stage == "weights" and not r.passed] == [
        "fc2.weight"]


def test_report_table_json_and_assertion(mlp, tmp_path):
    bad = JaxMLP(approximate=True, rngs=nnx.Rngs(0))
    with pytest.raises(AssertionError) as err:
        jt.assert_training_close(mlp, bad, _ids(), jt.sgd(0.1), steps=2, jax_float64=False)
    text = str(err.value)
    assert text.startswith("FAIL: first failure at stage 'forward', tensor 'act'")
    assert "max|jax-torch|" in text and "torch err" in text
    report = jt.compare(mlp, bad, _ids(), optimizer=jt.sgd(0.1), steps=2, jax_float64=False)
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == data
    assert data["first_failure"] == {"stage": "forward", "tensor": "act"}
    assert data["passed"] is False and len(data["rows"]) == len(report.rows)
    row = next(r for r in data["rows"] if r["stage"] == "forward" and r["tensor"] == "act")
    assert row["result"] == "FAIL" and row["jax_error"] > row["bound"]
    assert "step 2" in report.table("all") and "(not shown" not in report.table("all")
    assert jt.assert_forward_close(mlp, JaxMLP(rngs=nnx.Rngs(0)), _ids(),
                                   jax_float64=False).passed


def test_fallback_without_float64():
    """A torch model that hard-codes float32 has no float64 reference: the fallback bound,
    said in the report."""

    class Float32Only(TorchMLP):
        def forward(self, ids):
            return super().forward(ids).float()  # float32 even under .double()

    torch.manual_seed(0)
    report = jt.compare(Float32Only(), JaxMLP(rngs=nnx.Rngs(0)), _ids(), jax_float64=False)
    assert report.passed, report
    assert report.row("forward", "output").verdict.method == "fallback"
    assert report.row("forward", "fc2").verdict.method == "float64"
    assert any("fallback bound: output" in n for n in report.notes)
    report = jt.compare(Float32Only(), JaxMLP(rngs=nnx.Rngs(0)), _ids(), reference="none")
    assert report.reference.startswith("none: fallback bound")
    assert {r.verdict.method for r in report.rows} == {"fallback"}


# ---------------------------------------------------------------------------------------------
# Linen: automatic names paired by order
# ---------------------------------------------------------------------------------------------


class LinenMLP(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, ids):
        x = jaxembed.linen.Embed(V, D, padding_idx=0)(ids).sum(1)
        x = nn.LayerNorm(epsilon=self.eps)(nn.Dense(H)(x))
        x = nn.Dense(H)(jax.nn.gelu(x, approximate=False))
        return nn.Dense(3)(x)  # automatic names count constructions: Dense_2


def test_linen_by_order(mlp):
    module = LinenMLP()
    variables = module.init(jax.random.key(0), jnp.asarray(_ids()))
    pmap = jt.param_map(mlp, (module, variables))
    assert not pmap.problems
    assert {e.torch_name: e.jax_name for e in pmap.entries if e.how == "by order"} == {
        "embed.weight": "Embed_0.embedding", "fc1.weight": "Dense_0.kernel",
        "fc1.bias": "Dense_0.bias", "norm.weight": "LayerNorm_0.scale",
        "norm.bias": "LayerNorm_0.bias", "fc2.weight": "Dense_1.kernel",
        "fc2.bias": "Dense_1.bias", "head.weight": "Dense_2.kernel", "head.bias": "Dense_2.bias"}
    assert pmap.modules["fc2"] == "Dense_1"
    report = jt.compare(mlp, (module, variables), _ids(), optimizer=jt.adam(1e-2), steps=2,
                        jax_float64=False)
    assert report.passed, report
    assert report.title.endswith("(Linen): forward, gradients, 2 x Adam(lr=0.01)")
    bad = LinenMLP(eps=1e-3)
    report = jt.compare(mlp, (bad, variables), _ids(), jax_float64=False)
    assert (report.first_failure.stage, report.first_failure.name) == ("forward", "norm")


# ---------------------------------------------------------------------------------------------
# A recommender: EmbeddingBag + MLP, dense (Adam) and sparse (torch's sparse SGD)
# ---------------------------------------------------------------------------------------------


class TorchRec(torch.nn.Module):
    def __init__(self, sparse=False):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(V, D, mode="sum", padding_idx=0, sparse=sparse)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(),
                                       torch.nn.Linear(H, 1))

    def forward(self, ids, offsets=None, per_sample_weights=None):
        return self.mlp(self.bag(ids, offsets, per_sample_weights)).squeeze(-1)


class JaxRec(nnx.Module):
    def __init__(self, drop_weights=False, rngs=None):
        self.bag = jaxembed.EmbeddingBag(V, D, mode="sum", padding_idx=0, rngs=rngs)
        self.mlp = nnx.Sequential(nnx.Linear(D, H, rngs=rngs), nnx.relu,
                                  nnx.Linear(H, 1, rngs=rngs))
        self.drop_weights = drop_weights  # a planted bug: per_sample_weights not passed on

    def __call__(self, ids, offsets=None, per_sample_weights=None):
        weights = None if self.drop_weights else per_sample_weights
        return self.mlp(self.bag(ids, offsets, weights))[:, 0]


class SparseSumBag(nnx.Module):
    """torch's EmbeddingBag(mode="sum", padding_idx=0, sparse=True) over fixed-length bags:
    a sparse jaxembed table and a sum (the padding row is zero and gets no gradient)."""

    def __init__(self, padding_idx=0, rngs=None):
        self.table = jaxembed.Embed(V, D, padding_idx=padding_idx, sparse=True, rngs=rngs)

    def __call__(self, ids, offsets=None, per_sample_weights=None):
        assert offsets is None and per_sample_weights is None  # (B, L) bags only
        return self.table(ids).sum(1)


class JaxSparseRec(JaxRec):
    def __init__(self, padding_idx=0, rngs=None):
        super().__init__(rngs=rngs)
        self.bag = SparseSumBag(padding_idx, rngs)


def _bags(seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, 23)
    ids[[2, 9, 10]] = 0  # padding inside bags
    offsets = np.array([0, 4, 4, 9, 15, 20])  # an empty bag
    labels = rng.integers(0, 2, 6).astype(np.float32)
    return (ids, offsets, rng.uniform(0.5, 2.0, 23).astype(np.float32)), labels


def _bce(framework):
    if framework == "torch":
        return lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(out, y)
    import optax

    return lambda out, y: optax.sigmoid_binary_cross_entropy(out, y).mean()


def test_recommender_dense_adam():
    torch.manual_seed(1)
    tm = TorchRec()
    inputs, labels = _bags()
    loss = (_bce("torch"), _bce("jax"))
    report = jt.compare(tm, JaxRec(rngs=nnx.Rngs(0)), inputs, targets=labels, loss=loss,
                        optimizer=jt.adam(1e-2, weight_decay=1e-3), steps=3, jax_float64=False)
    assert report.passed, report
    assert report.row("forward", "bag").verdict.result in ("bit-exact", "pass")
    assert {r.name for r in report.rows if r.stage == "forward"} == {
        "bag", "mlp.0", "mlp.2", "mlp", "output", "loss"}
    bad = jt.compare(tm, JaxRec(drop_weights=True, rngs=nnx.Rngs(0)), inputs, targets=labels,
                     loss=loss, jax_float64=False)
    assert (bad.first_failure.stage, bad.first_failure.name) == ("forward", "bag"), bad


def test_recommender_sparse_sgd():
    """torch's EmbeddingBag(sparse=True) with SGD (momentum) against a sparse jaxembed table
    with jaxembed.sparse.sgd: the table needs a hand entry (the port keeps it one level down)."""
    torch.manual_seed(2)
    tm = TorchRec(sparse=True)
    ids = np.random.default_rng(4).integers(0, V, (6, 5))
    ids[:, 3:] = 0
    hand = {"bag.weight": "bag.table.embedding"}
    pmap = jt.param_map(tm, JaxSparseRec(rngs=nnx.Rngs(0)), overrides=hand)
    entry = pmap.entry("bag.weight")
    assert (entry.how, entry.jax_kind, entry.torch_sparse) == ("hand", "sparse", True)
    optimizer = jt.sgd(0.1, momentum=0.9)
    report = jt.compare(tm, JaxSparseRec(rngs=nnx.Rngs(0)), ids, overrides=hand,
                        optimizer=optimizer, steps=4, jax_float64=False)
    assert report.passed, report
    assert report.row("forward", "bag").jax_name == "bag"  # the module at the same path
    bad = jt.compare(tm, JaxSparseRec(padding_idx=None, rngs=nnx.Rngs(0)), ids, overrides=hand,
                     optimizer=optimizer, steps=1, jax_float64=False)
    first = bad.first_failure
    assert (first.stage, first.name, first.jax_name) == (
        "gradients", "bag.weight", "bag.table.embedding"), bad


def test_judge_element_allowance():
    """Elements undetermined at float32 (an adaptive optimizer's step for a gradient within
    rounding of zero) get their own allowance; every other element keeps the tensor's bound."""
    ref = np.zeros(4)
    torch32 = np.zeros(4, np.float32)
    jax32 = np.float32([0, 0, 2e-3, 0])  # one element stepped the other way
    assert not jt.judge(jax32, torch32, ref).passed
    v = jt.judge(jax32, torch32, ref, element_allowance=np.array([0, 0, 3e-3, 0]),
                 element_reason="undetermined")
    assert v.passed and v.note == "1 element(s) beyond the bound: undetermined"
    v = jt.judge(jax32, torch32, ref, element_allowance=np.array([3e-3, 0, 0, 0]))
    assert not v.passed
