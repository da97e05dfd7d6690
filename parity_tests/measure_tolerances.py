"""Measures the figures behind jaxembed/_src/tolerances.py on the current backend (not a test).

    python parity_tests/measure_tolerances.py renorm       # max ulp per dtype and norm_type
    python parity_tests/measure_tolerances.py trajectory   # max K of K * eps * max|w| per run
    python parity_tests/measure_tolerances.py gradient     # ulp / K of the table gradients
    python parity_tests/measure_tolerances.py encoder      # MiniLM: f32-vs-f64 error ratios

Run from the repository root with jaxembed importable (pip install -e . or PYTHONPATH=.).
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxembed import functional as F
from jaxembed._src import interop
from jaxembed._src.tools.parity import NP_DTYPES, abs_diff, eps_of, torch_device, ulp_distance
from jaxembed._src.tools.training import OptimizerSpec as Opt
from jaxembed._src.tools.training import jax_train, torch_train

DTYPES = ["float32", "float64", "bfloat16", "float16"]


def renorm():
    device = torch_device()
    worst = {}
    for dtype in DTYPES:
        for d in (16, 17, 37):
            for p in (0.0, 0.5, 1.0, 2.0, 3.0, math.inf):
                for max_norm in (0.05, 0.3, 1.0, 1.3, 6.0, 50.0):
                    for seed in range(3):
                        rng = np.random.default_rng(seed)
                        w = (rng.normal(size=(60, d)) * 1.5).astype(NP_DTYPES[dtype])
                        ids = np.arange(60)
                        with jax.enable_x64(dtype == "float64"):
                            wt = interop.numpy_to_torch(w, device)
                            torch.nn.functional.embedding(
                                interop.numpy_to_torch(ids, device), wt, max_norm=max_norm,
                                norm_type=p)
                            got = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids),
                                                                max_norm, p))
                        u = ulp_distance(got, interop.torch_to_numpy(wt))
                        worst[dtype, p] = max(worst.get((dtype, p), 0), u)
    for (dtype, p), u in sorted(worst.items()):
        print(f"renorm {dtype:<9} p={p:<4g} max ulp {u}")


def trajectory():
    device = torch_device()
    specs = [Opt("sgd", 0.1), Opt("sgd", 0.1, momentum=0.9),
             Opt("sgd", 0.1, momentum=0.9, nesterov=True), Opt("sgd", 0.1, weight_decay=0.1),
             Opt("sgd", 0.1, momentum=0.9, weight_decay=0.1), Opt("adam", 0.01),
             Opt("adam", 0.01, weight_decay=0.1), Opt("adamw", 0.01, weight_decay=0.1)]
    options = [{}, dict(padding_idx=0), dict(max_norm=1.0), dict(scale_grad_by_freq=True),
               dict(padding_idx=3, max_norm=1.0, scale_grad_by_freq=True)]
    for dtype in DTYPES:
        for d in (16, 17):
            rng = np.random.default_rng(0)
            w = (rng.normal(size=(20, d)) * 1.5).astype(NP_DTYPES[dtype])
            ids = [rng.integers(0, 20, size=(6, 7)) for _ in range(10)]
            tg = [rng.normal(size=(6, 7, d)).astype(NP_DTYPES[dtype]) for _ in range(10)]
            for spec in specs:
                if dtype == "float16" and spec.kind != "sgd":
                    continue  # eps=1e-8 underflows in float16
                for opts in options:
                    with jax.enable_x64(dtype == "float64"):
                        want = torch_train(w, ids, tg, spec, device=device, **opts)
                        got = jax_train(w, ids, tg, spec, **opts)
                    k = float(np.max(abs_diff(got, want))) / eps_of(want.dtype) / float(
                        np.max(np.abs(want.astype(np.float64))))
                    print(f"trajectory {dtype:<9} D={d} {spec.label:<32} {opts}: "
                          f"K={k:.2f} max ulp {ulp_distance(got, want)}", flush=True)


def gradient():
    """Table gradients: max ulp, and K = max |diff| / (eps * sum_i |g_i / count|) per element."""
    device = torch_device()
    for dtype in DTYPES:
        for sgbf in (False, True):
            worst_ulp, worst_k = 0, 0.0
            for seed in range(5):
                rng = np.random.default_rng(seed)
                v, d = 12, 37
                w = rng.normal(size=(v, d)).astype(NP_DTYPES[dtype])
                ids = rng.integers(0, v, size=(8, 9))
                g = rng.normal(size=ids.shape + (d,)).astype(NP_DTYPES[dtype])
                wt = interop.numpy_to_torch(w, device).requires_grad_(True)
                torch.nn.functional.embedding(interop.numpy_to_torch(ids, device), wt,
                                              padding_idx=0, scale_grad_by_freq=sgbf).backward(
                    interop.numpy_to_torch(g, device))
                want = interop.torch_to_numpy(wt.grad)
                with jax.enable_x64(dtype == "float64"):
                    _, vjp = jax.vjp(lambda t: F.embedding(jnp.asarray(ids), t, padding_idx=0,
                                                           scale_grad_by_freq=sgbf),
                                     jnp.asarray(w))
                    got = np.asarray(vjp(jnp.asarray(g))[0])
                counts = np.bincount(ids.reshape(-1), minlength=v) if sgbf else np.ones(v)
                mag = np.zeros((v, d))
                np.add.at(mag, ids.reshape(-1),
                          np.abs(g.astype(np.float64)).reshape(-1, d) / counts[ids.reshape(-1)][:, None])
                k = abs_diff(got, want) / (eps_of(want.dtype) * np.where(mag > 0, mag, 1))
                worst_ulp = max(worst_ulp, ulp_distance(got, want))
                worst_k = max(worst_k, float(k.max()))
            print(f"gradient {dtype:<9} scale_grad_by_freq={sgbf!s:<5} max ulp {worst_ulp} "
                  f"K {worst_k:.2f}")


def encoder(batches=16):
    """MiniLM (test_bert.py): per tensor, JAX's float32 error against its float64 run over
    torch's (rms and max), and the float64 runs' distance in eps * max|x|; over test_bert's
    sentences and ``batches`` batches of 4 random vocabulary strings (2-19 words)."""
    import copy

    from jaxembed.models import BertModel
    from test_bert import MINILM_DIR, SENTENCES, TENSORS, _jax_run, _tokenize, _torch_run
    from transformers import BertModel as TorchBert

    t32 = TorchBert.from_pretrained(MINILM_DIR, local_files_only=True,
                                    attn_implementation="eager").eval()
    t64 = copy.deepcopy(t32).double()
    j32 = BertModel.from_pretrained(MINILM_DIR, precision="highest")
    with jax.enable_x64(True):
        j64 = BertModel.from_pretrained(MINILM_DIR, param_dtype=jnp.float64, precision="highest")
    words = (MINILM_DIR / "vocab.txt").read_text().split("\n")[2000:12000]
    rng = np.random.default_rng(0)
    worst = {}
    for b in range(batches + 1):
        sentences = SENTENCES if b == 0 else [
            " ".join(rng.choice(words, size=rng.integers(2, 20))) for _ in range(4)]
        batch = _tokenize(sentences)
        r = {"torch32": _torch_run(t32, batch), "torch64": _torch_run(t64, batch),
             "jax32": _jax_run(j32, batch)}
        with jax.enable_x64(True):
            r["jax64"] = _jax_run(j64, batch)
        for name in TENSORS:
            dj, dt = r["jax32"][name] - r["jax64"][name], r["torch32"][name] - r["torch64"][name]
            rms = lambda d: np.sqrt(np.mean(np.square(d)))  # noqa: E731
            f64 = np.abs(r["jax64"][name] - r["torch64"][name]).max() / (
                np.finfo(np.float64).eps * np.abs(r["torch64"][name]).max())
            row = {"rms": rms(dj) / rms(dt), "max": np.abs(dj).max() / np.abs(dt).max(),
                   "f64_eps": f64}
            print(f"batch {b:2d} {name:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
            for k, v in row.items():
                worst[k] = max(worst.get(k, 0.0), v)
    print("worst:", {k: round(float(v), 3) for k, v in worst.items()})


if __name__ == "__main__":
    {"renorm": renorm, "trajectory": trajectory, "gradient": gradient,
     "encoder": encoder}[sys.argv[1]]()
