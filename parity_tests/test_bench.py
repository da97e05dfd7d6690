"""The benchmark harness (``python -m benchmarks`` / ``jaxembed bench``) on tiny sizes.

It must run end to end, write well-formed JSON, and every contender's output must pass the
harness's own check against the float64 reference (torch's and flax's included). The checker
itself must reject wrong results, so a passing check means something.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed._src.tools.bench import bags, cases, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    "fwd": {*cases.JAX_CONTENDERS, cases.TORCH, cases.COPY, cases.DISPATCH},
    "fwdbwd": {*cases.JAX_CONTENDERS, cases.TORCH, cases.ZERO},
    "sgd": {*cases.JAX_CONTENDERS, cases.TORCH},
    "adam": {*cases.JAX_CONTENDERS, cases.TORCH},
    "opt_fwd": {"plain", "max_norm"},
    "opt_fwdbwd": set(cases.OPTIONS),
}
# Tiny bag and model configurations: the code paths of the defaults, in seconds.
TINY = ["--bag-configs", "300:8:16:4", "--model-config",
        "vocab=300,dim=16,heads=2,ffn=32,batch=2,seq=8"]
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _bench(*args, timeout=300, **kw):
    cmd = [sys.executable, "-m", "benchmarks", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = _bench("--quick", "--V", "300", "--D", "8", "--n", "64", "--dists", "padding",
                  "--skew-ops", ",".join(cases.OPS), "--reps", "2", "--target-ms", "0.2",
                  "--ops", ",".join((*cases.OPS, *bags.OPS, model.OP)), *TINY, "--out",
                  str(out), timeout=900)
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
        assert r["median_ms"] > 0 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] + 1e-12
        assert r["first_call_ms"] > 0 and r["compile_s"] >= 0
        if r["op"] in bags.OPS:
            want = bags.bytes_model(r["op"], bags.BagShape(r["V"], r["D"], r["bags"],
                                                           r["length"]), r["n"])
        elif r["op"] == model.OP:
            want = 0  # a whole step: time only
        else:
            want = cases.bytes_model(r["bytes_model"], cases.Shape(r["V"], r["D"], r["n"],
                                                                   r["dtype"]))
        assert r["bytes"] == want and ("gbps" in r) == (want > 0)
        if want:
            assert math.isfinite(r["gbps"]) and r["gbps"] > 0
    for dtype in ("float32", "bfloat16"):
        for op, names in EXPECTED.items():
            assert groups[(dtype, "padding", op)] == names, (dtype, op)
    for layout in bags.LAYOUTS:  # --quick: two modes, no torch.compile
        for mode in ("sum", "max"):
            for op in bags.OPS:
                assert groups[("float32", f"{layout} {mode}", op)] == {"jaxembed", "torch"}
    assert groups[("float32", "uniform", model.OP)] == {"jaxembed", "flax.nnx", "torch"}
    ids = {t["id"] for t in result["targets"]}
    assert {"fwd_vs_flax_nnx", "fwd_vs_torch", "fwdbwd_vs_torch", "sgd_vs_torch", "padding_idx",
            "scale_grad_by_freq", "max_norm_fwd", "max_norm_fwdbwd", "skew_backward",
            "bag_fwd_2d_vs_torch", "bag_fwd_1d_vs_torch", "bag_fwdbwd_vs_torch",
            "model_vs_flax_nnx"} <= ids
    for t in result["targets"]:
        # Tiny sizes are in cache (no out-of-cache pairs); one id distribution (no skew pairs);
        # no torch.compile and no lookup-free model steps (no share) in --quick.
        if t["id"] not in ("fwd_vs_copy", "skew_backward") and "compile" not in t["id"] \
                and not t["id"].startswith("model_share"):
            assert t["n"] > 0 and t["status"] in ("met", "missed"), t
    assert result["partial"] is False and result["stopped_by"] is None


def test_torch_compile_contender_is_checked_and_timed(tmp_path):
    # The "eager" backend runs torch.compile's code path (dynamo) in seconds; the timings in
    # RESULTS.md use inductor, the default.
    proc = _bench("--V", "300", "--D", "8", "--n", "64", "--dtypes", "float32", "--dists",
                  "uniform", "--ops", "fwd,sgd", "--reps", "1", "--warmup", "0",
                  "--target-ms", "0.1", "--torch-compile", "--torch-compile-backend", "eager",
                  "--no-plot", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = json.loads((tmp_path / "bench.json").read_text())["records"]
    compiled = [r for r in recs if r["contender"] == cases.TORCH_COMPILE]
    assert {r["op"] for r in compiled} == {"fwd", "sgd"}
    assert all(r["check"]["ok"] and r["median_ms"] > 0 and r["compile_s"] >= 0
               for r in compiled)
    assert "## Compile time" in (tmp_path / "bench.md").read_text()


def test_model_step_without_lookup_is_checked_against_float64():
    # The lookup-free steps (the embedding's share; left out of --quick) against their own two
    # float64 torch steps; a step given the wrong input fails the check.
    import dataclasses

    import torch

    cfg = dataclasses.replace(model.FULL, vocab=300, dim=16, heads=2, ffn=32, batch=2, seq=8)
    benches = model.benches(cfg, torch, None, np.random.default_rng(0))
    for name in ("flax.nnx -lookup", "torch -lookup"):
        assert benches[name].check(benches[name].call())["ok"], name
    wrong = model._checked(benches["torch"], model.reference_losses(
        torch, cfg, model.init_weights(cfg, np.random.default_rng(0)), *model.make_batch(
            cfg, np.random.default_rng(1))))
    assert not wrong.check(wrong.call())["ok"]


def test_unavailable_torch_compile_is_reported_with_its_error():
    import torch

    backend, why = cases.torch_compile_backend(torch, "no_such_backend")
    assert backend is None and "no_such_backend" in why and "unavailable" in why


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


# ---------------------------------------------------------------------------------------------
# The command line: usage mistakes (one line, exit 2, before any work) and interrupted runs
# ---------------------------------------------------------------------------------------------


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "jaxembed", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _assert_usage_error(proc, argument):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and argument in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def _usage_argv(argv, tmp_path):
    not_json = tmp_path / "bench.json"
    not_json.write_text("this is not JSON")
    argv = [a.format(missing=tmp_path / "missing.json", not_json=not_json) for a in argv]
    return ["--quick", "--ops", "fwd", "--out", str(tmp_path / "out"), *argv]


@pytest.mark.parametrize("argv, argument", [
    (["--V", "0"], "--V"), (["--report", "{missing}"], "--report"), (["--out", "/proc/x"], "--out"),
])
def test_bench_usage_errors_are_one_line_with_exit_status_2(argv, argument, tmp_path):
    proc = _cli("bench", *_usage_argv(argv, tmp_path))
    _assert_usage_error(proc, argument)
    assert "==" not in proc.stdout  # nothing was timed


@pytest.mark.parametrize("argv, argument", [
    (["--V", "-5"], "--V"), (["--D", "0"], "--D"), (["--n", "0"], "--n"), (["--V", "8,x"], "--V"),
    (["--reps", "0"], "--reps"), (["--warmup", "-1"], "--warmup"), (["--target-ms", "0"],
                                                                  "--target-ms"),
    (["--report", "{not_json}"], "--report"), (["--bag-configs", "10:4:0:2"], "--bag-configs"),
    (["--model-config", "heads=5"], "--model-config"), (["--model-config", "depth=2"],
                                                        "--model-config"),
])
def test_every_bench_argument_is_checked_up_front(argv, argument, tmp_path, capsys):
    # The same parser in-process (the subprocess test above covers the command itself).
    from jaxembed._src.tools.bench.main import main

    with pytest.raises(SystemExit) as e:
        main(_usage_argv(argv, tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and argument in err[0] and err[0].startswith("jaxembed bench: error:")


def test_parity_json_path_is_checked_before_any_case(tmp_path):
    proc = _cli("parity", "--json", str(tmp_path / "missing" / "dir" / "p.json"))
    _assert_usage_error(proc, "--json")
    assert "passed" not in proc.stdout  # no case ran


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_the_outputs_of_one_run(tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("bench.json", "bench.md", "bench.png"):
        (out / name).write_text("a previous run")
    # Many small shapes: the run cannot end before the signal, and checkpoints after each.
    cmd = [sys.executable, "-m", "benchmarks", "--V", ",".join(str(300 + i) for i in range(60)),
           "--D", "8", "--n", "64", "--dtypes", "float32", "--dists", "uniform", "--ops", "fwd",
           "--reps", "1", "--warmup", "0", "--target-ms", "0.1", "--no-torch", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((out / "bench.json").read_text()).get("records"):
                break  # the first checkpoint
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    result = json.loads((out / "bench.json").read_text())
    assert result["partial"] is True and result["records"]
    names = sorted(p.name for p in out.iterdir())
    if sig == signal.SIGKILL:
        # No time to write anything more: the checkpointed JSON alone, the previous run's
        # markdown and PNG gone (a temporary file may remain if the kill hit a write).
        assert proc.returncode == -signal.SIGKILL
        assert [n for n in names if not n.endswith(".tmp")] == ["bench.json"]
        return
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    assert result["stopped_by"] == "SIGTERM"
    md = (out / "bench.md").read_text()
    assert f"**Partial run** (stopped by SIGTERM): the {len(result['records'])} records" in md
    try:
        import matplotlib  # noqa: F401
        has_png = True
    except ImportError:
        has_png = False
    assert names == ["bench.json", "bench.md"] + (["bench.png"] if has_png else [])
    if has_png:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
