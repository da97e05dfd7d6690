"""The benchmark harness (``python -m benchmarks`` / ``jaxembed bench``) on tiny sizes.

It must run end to end, write well-formed JSON, and every contender's output must pass the
harness's own check against the float64 reference (torch's and flax's included). The checker
itself must reject wrong results, so a passing check means something.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed._src.tools.bench import cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    "fwd": {*cases.JAX_CONTENDERS, cases.TORCH, cases.COPY, cases.DISPATCH},
    "fwdbwd": {*cases.JAX_CONTENDERS, cases.TORCH, cases.ZERO},
    "sgd": {*cases.JAX_CONTENDERS, cases.TORCH},
    "adam": {*cases.JAX_CONTENDERS, cases.TORCH},
    "opt_fwd": {"plain", "max_norm"},
    "opt_fwdbwd": set(cases.OPTIONS),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--V", "300", "--D", "8", "--n", "64",
           "--dists", "padding", "--skew-ops", ",".join(cases.OPS), "--reps", "2",
           "--target-ms", "0.2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def test_quick_run_succeeds_and_writes_outputs(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "targets" in proc.stdout and "allocator: jemalloc" in proc.stdout
    assert (out / "bench.md").read_text().count("## Targets") == 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "bench.png").stat().st_size > 1000


def test_quick_run_json_is_well_formed_and_every_check_passes(quick_run):
    proc, out = quick_run
    result = json.loads((out / "bench.json").read_text())
    assert {"settings", "args", "bytes_models", "notes", "records", "targets"} <= set(result)
    s = result["settings"]
    for key in ("jax", "backend", "jemalloc_loaded", "MALLOC_CONF", "OMP_WAIT_POLICY",
                "recommended_settings_active"):
        assert key in s
    assert isinstance(s["jemalloc_loaded"], bool)
    recs = result["records"]
    groups = {}
    for r in recs:
        groups.setdefault((r["dtype"], r["dist"], r["op"]), set()).add(r["contender"])
        assert r["check"]["ok"], r
        assert r["median_ms"] > 0 and math.isfinite(r["gbps"]) and r["gbps"] > 0
        assert r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] + 1e-12
        assert r["bytes"] == cases.bytes_model(r["bytes_model"], cases.Shape(
            r["V"], r["D"], r["n"], r["dtype"]))
    for dtype in ("float32", "bfloat16"):
        for op, names in EXPECTED.items():
            assert groups[(dtype, "padding", op)] == names, (dtype, op)
    ids = {t["id"] for t in result["targets"]}
    assert {"fwd_vs_flax_nnx", "fwd_vs_torch", "fwdbwd_vs_torch", "sgd_vs_torch", "padding_idx",
            "scale_grad_by_freq", "max_norm_fwd", "max_norm_fwdbwd", "skew_backward"} <= ids
    for t in result["targets"]:
        # Tiny sizes are in cache (no out-of-cache pairs); one id distribution (no skew pairs).
        if t["id"] not in ("fwd_vs_copy", "skew_backward"):
            assert t["n"] > 0 and t["status"] in ("met", "missed"), t


def _problem(dtype="float32"):
    rng = np.random.default_rng(0)
    shape = cases.Shape(50, 4, 40, dtype)
    W = rng.standard_normal((50, 4), dtype=np.float32).astype(cases.DTYPES[dtype])
    ids = cases.make_ids("padding", 50, 40, rng)
    g = rng.standard_normal((40, 4), dtype=np.float32).astype(W.dtype)
    return cases.Problem(shape, W, jnp.asarray(W), ids, g)


def test_checker_accepts_correct_and_rejects_wrong_results():
    pb = _problem()
    ops = cases.JaxOps(*cases.jax_lookups(pb.shape)["jaxembed"])
    io = cases._JaxIO
    rows, grad = ops.bench("fwdbwd", pb).call()
    assert cases.check_output("fwdbwd", io, (rows, grad), pb.ref)["ok"]
    assert not cases.check_output("fwdbwd", io, (rows, grad * 1.01), pb.ref)["ok"]
    assert not cases.check_output("fwdbwd", io, (rows.at[0, 0].add(1e-6), grad), pb.ref)["ok"]
    untouched = int(np.setdiff1d(np.arange(50), pb.ids_np)[0])
    assert not cases.check_output("fwdbwd", io, (rows, grad.at[untouched].set(1.0)), pb.ref)["ok"]
    # padding_idx: the padding row's gradient must be zero.
    assert not cases.check_output("opt_fwdbwd", io, (rows, grad), pb.ref, "padding_idx")["ok"]
    new = ops.bench("sgd", pb).call()
    assert cases.check_output("sgd", io, new, pb.ref)["ok"]
    assert not cases.check_output("sgd", io, new.at[untouched].add(1e-3), pb.ref)["ok"]
    assert not cases.check_output("adam", io, new, pb.ref)["ok"]


def test_bench_is_a_cli_subcommand(capsys):
    from jaxembed._src.tools import cli

    assert "bench" in cli.SUBCOMMANDS
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_id_distributions():
    rng = np.random.default_rng(0)
    pad = cases.make_ids("padding", 1000, 4000, rng)
    assert (pad == cases.PADDING_IDX).sum() >= 2000
    z = cases.make_ids("zipf", 1000, 4000, rng)
    assert z.min() >= 0 and z.max() < 1000
    assert np.bincount(z).max() > 10 * 4000 / 1000  # heavy head
    with pytest.raises(ValueError):
        cases.make_ids("normal", 10, 10, rng)
    assert jax.default_backend() in ("cpu", "gpu", "tpu")


def test_report_reevaluates_a_json_without_timing(quick_run, tmp_path, capsys):
    from jaxembed._src.tools.bench.main import main

    _, out = quick_run
    assert main(["--report", str(out / "bench.json"), "--out", str(tmp_path), "--no-plot"]) == 0
    again = json.loads((tmp_path / "bench.json").read_text())
    before = json.loads((out / "bench.json").read_text())
    assert again["records"] == before["records"]
    assert [t["n_met"] for t in again["targets"]] == [t["n_met"] for t in before["targets"]]
    assert "targets" in capsys.readouterr().out and (tmp_path / "bench.md").exists()
