"""`jaxembed parity`: the report runs, prints its table, writes JSON and sets its exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from jaxembed._src.tools import parity
from jaxembed._src.tolerances import Tolerance

SMALL_SWEEP = ["forward/float32", "grad/padding_idx=0/bfloat16", "renorm/p=2/max_norm=1/float32",
               "module/linen", "train/functional/sgd/pad=0/float32", "frozen/nnx"]


def test_small_sweep_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "parity.json"
    argv = [a for name in SMALL_SWEEP for a in ("-k", name)] + ["--json", str(path)]
    assert parity.main(argv) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "max ulp diff" in out and "FAIL" not in out
    assert f"[ {len(SMALL_SWEEP)}/{len(SMALL_SWEEP)}]" in out  # progress lines
    report = json.loads(path.read_text())
    assert report["backend"] == parity.jax.default_backend()
    results = {r["case"]: r for r in report["results"]}
    assert len(results) == len(SMALL_SWEEP)
    assert all(r["passed"] for r in results.values())
    # The bit-exact claims, as numbers: forward and the plain jitted SGD run on CPU.
    assert results["forward/float32"]["max_ulp_diff"] == 0
    if report["backend"] == "cpu":
        assert results["train/functional/sgd/pad=0/float32"]["max_abs_diff"] == 0.0


def test_a_failing_case_fails_the_run(monkeypatch, capsys):
    def off_by_one_ulp(backend, device):
        want = np.ones(3, np.float32)
        return np.nextafter(want, np.float32(2)), want, Tolerance(ulp=0)

    def crash(backend, device):
        raise RuntimeError("boom")

    monkeypatch.setattr(parity, "default_cases", lambda: [
        parity.Case("off-by-one", "float32", off_by_one_ulp),
        parity.Case("crash", "float32", crash),
    ])
    assert parity.main([]) == 1
    out = capsys.readouterr().out
    assert "0 passed, 2 failed" in out and "boom" in out
    assert "1.19e-07" in out  # max abs diff of the off-by-one case


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_missing_torch_is_reported_clearly():
    r = _run("import sys; sys.modules['torch'] = None\n"
             "from jaxembed._src.tools.cli import main; sys.exit(main(['parity']))")
    assert r.returncode == parity.MISSING_TORCH_EXIT, r.stderr
    assert "torch is not installed" in r.stderr


def test_entry_points_list_the_sweep():
    listed = subprocess.run([sys.executable, "-m", "jaxembed.parity", "--list"],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert names == [c.name for c in parity.default_cases()]
    via_cli = subprocess.run([sys.executable, "-m", "jaxembed", "parity", "--list"],
                             capture_output=True, text=True)
    assert via_cli.stdout.split() == names
