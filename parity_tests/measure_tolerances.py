"""Measures the figures behind jaxembed/_src/tolerances.py on the current backend (not a test).

    python parity_tests/measure_tolerances.py renorm       # max ulp per dtype and norm_type
    python parity_tests/measure_tolerances.py trajectory   # max K of K * eps * max|w| per run
    python parity_tests/measure_tolerances.py gradient     # ulp / K of the table gradients
    python parity_tests/measure_tolerances.py encoder      # MiniLM: f32-vs-f64 error ratios
    python parity_tests/measure_tolerances.py sparse       # sparse optimizers, eps*(|w|+1)
    python parity_tests/measure_tolerances.py sparse-exact #   ... with torch's sqrt and x64

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


def sparse_trajectories(torch_opt, tx, lr_at, v, shape, seed, steps=12, pad=2, d=19):
    """The tables after each of ``steps`` sparse steps, torch's and jaxembed's (jitted, donated)
    on the same random batches. ``lr_at(t)``: the lr torch uses at step t (jaxembed's schedule
    value, or its constant lr)."""
    import functools

    from jaxembed import sparse

    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, v, shape, generator=g) for _ in range(steps)]
    gouts = [torch.randn(*shape, d, generator=g) for _ in ids]
    w0 = torch.randn(v, d, generator=g)
    e = torch.nn.Embedding(v, d, padding_idx=pad, sparse=True)
    with torch.no_grad():
        e.weight.copy_(w0)
    opt = torch_opt(e.parameters(), lr=1.0)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(table, state, ids, gout):
        rows = F.embedding(ids, table, padding_idx=pad, sparse=True)
        grads = sparse.row_gradients(ids, jax.grad(lambda r: jnp.sum(r * gout))(rows), v, pad)
        return tx.update(grads, state, table)

    table = jnp.asarray(w0.numpy())
    state = tx.init(table)
    ref, got = [], []
    for t, (b, go) in enumerate(zip(ids, gouts)):
        for group in opt.param_groups:
            group["lr"] = lr_at(t)
        opt.zero_grad()
        e(b).backward(go)
        opt.step()
        table, state = step(table, state, jnp.asarray(b.numpy()), jnp.asarray(go.numpy()))
        ref.append(e.weight.detach().numpy().copy())
        got.append(np.asarray(table))
    return ref, got


def relative_to_weights(ref, got) -> float:
    """max |got - ref| / (eps(float32) * (|ref| + 1)) over a trajectory."""
    worst = max(float((np.abs(a - b) / (np.abs(a) + 1)).max()) for a, b in zip(ref, got))
    return worst / eps_of(np.float32)


def schedule_lr(schedule):
    """torch's lr at step t: the schedule's value on optax's int32 step count."""
    return lambda t: float(np.asarray(schedule(jnp.asarray(t, jnp.int32))))


def _sparse_run(*args):
    ref, got = sparse_trajectories(*args)
    return relative_to_weights(ref, got), all((a == b).all() for a, b in zip(ref, got))


def sparse_optimizers(exact_env=False):
    """SparseAdam / Adagrad against torch for batches of 8 to 400 ids (torch's coalesce() keeps
    input order only up to 16 entries), and SGD with optax schedules (a traced lr rounds lr * g
    per entry). ``exact_env``: torch's sqrt substituted and x64 on, leaving only the order."""
    import itertools

    import optax

    from jaxembed import sparse
    from jaxembed._src.core import sparse_optim

    if exact_env:
        def torch_sqrt(x):
            def host(a):
                return torch.sqrt(torch.from_numpy(np.ascontiguousarray(a))).numpy()

            return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

        sparse_optim._sqrt = torch_sqrt
        jax.config.update("jax_enable_x64", True)
    worst = {}
    for v, n, seed, lr, name in itertools.product(
        [13, 50], [8, 16, 17, 40, 100, 400], range(4), [0.01, 0.05, 0.1, 0.5], ["adam", "adagrad"]
    ):
        if name == "adam":
            tx, make = sparse.sparse_adam(lr), torch.optim.SparseAdam
        else:
            tx, make = sparse.adagrad(lr), torch.optim.Adagrad
        err, exact = _sparse_run(make, tx, lambda t, lr=lr: lr, v, (n,), seed)
        key = (name, "<= 16 ids" if n <= 16 else "> 16 ids")
        w = worst.setdefault(key, [0.0, True, None])
        if err > w[0]:
            w[0], w[2] = err, (v, n, seed, lr)
        w[1] &= exact
    schedules = {
        "exponential": optax.exponential_decay(0.1, 1, 0.9),
        "cosine": optax.cosine_decay_schedule(0.5, 12),
        "linear": optax.linear_schedule(0.3, 0.01, 12),
    }
    shapes = [(2, 8), (5, 20), (40,)]
    for (sname, sched), shape, seed in itertools.product(schedules.items(), shapes, range(3)):
        lr_at = schedule_lr(sched)
        err, exact = _sparse_run(torch.optim.SGD, sparse.sgd(sched), lr_at, 13, shape, seed)
        w = worst.setdefault(("sgd", sname), [0.0, True, None])
        if err > w[0]:
            w[0], w[2] = err, (13, shape, seed)
        w[1] &= exact
    for (name, kind), (err, exact, where) in sorted(worst.items()):
        print(f"sparse {name:<8} {kind:<12} max {err:.3f} eps*(|w|+1)  all bit-exact {exact}  "
              f"worst at (V, n, seed, lr) {where}")


if __name__ == "__main__":
    {
        "renorm": renorm,
        "trajectory": trajectory,
        "gradient": gradient,
        "sparse": sparse_optimizers,
        "sparse-exact": lambda: sparse_optimizers(exact_env=True),
        "encoder": encoder,
    }[sys.argv[1]]()
