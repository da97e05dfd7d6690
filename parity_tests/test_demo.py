"""``jaxembed demo``: its torch comparisons pass, and its exit status reports a disagreement."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from jaxembed._src.tools import cli, demo


def _run(capsys, argv=()):
    status = cli.main(["demo", *argv])
    return status, capsys.readouterr().out


@pytest.fixture(scope="module")
def full_run():
    """One run of every step (the steps compile under jit, so each run takes seconds)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli.main(["demo"])
    return status, buffer.getvalue()


def test_demo_agrees_with_torch(full_run):
    status, out = full_run
    assert status == 0, out
    # Steps 1, 2, 3 (gradient, table), 4 (two tables), 5 (output, table) against torch.
    assert "All checks passed: 8 torch comparisons." in out
    assert "DIFFERS" not in out and "FAILED" not in out
    for n in range(1, 6):
        assert f"Step {n}." in out
    # Forward, gradient and the jitted SGD step are bit-exact on CPU.
    assert out.count("required bit-exact): OK") >= (6 if demo.ARITHMETIC_ULP == 0 else 4)


def test_sgd_step_is_the_tutorials(full_run):
    """Step 3 prints the tutorial's gradient and, to its 4th decimal, its updated table."""
    status, out = full_run
    step3 = out.split("Step 3.")[1].split("Step 4.")[0]
    assert status == 0
    assert "[-0.0395,  0.1529,  0.3742]" in step3  # the tutorial's gradient rows
    assert "[-0.0863,  0.0353,  0.2030]" in step3
    assert "jaxembed table after the update:" in step3


def _nudged(array):
    """``array`` with one element moved by 1e-3: a disagreement beyond every tolerance."""
    array = np.array(array, np.float32)
    array.flat[-1] += np.float32(1e-3)
    return array


def test_exit_status_flips_when_torch_disagrees(capsys, monkeypatch):
    real = demo._torch_sgd_step

    def wrong_sgd_step(*args):
        loss, grad, table = real(*args)
        return loss, grad, _nudged(table)

    monkeypatch.setattr(demo, "_torch_sgd_step", wrong_sgd_step)
    status, out = _run(capsys, ["--step", "3"])
    assert status == 1
    assert "table after optimizer.step(): max |jaxembed - torch| = 0.001" in out
    assert "DIFFERS" in out
    assert "FAILED: 1 check(s): table after optimizer.step() vs torch" in out


def test_one_ulp_off_forward_fails(capsys, monkeypatch):
    """The forward comparison is bit-exact: one ulp is a failure."""
    real = demo._torch_lookup

    def off_by_one_ulp(torch, weight, ids, **kwargs):
        out, table = real(torch, weight, ids, **kwargs)
        out = np.array(out)
        out[0, 0] = np.nextafter(out[0, 0], np.float32(np.inf))
        return out, table

    monkeypatch.setattr(demo, "_torch_lookup", off_by_one_ulp)
    status, out = _run(capsys, ["--step", "1"])
    assert status == 1
    assert "(1 ulp; required bit-exact): DIFFERS" in out


def test_own_check_failure_flips_exit_status(capsys, monkeypatch):
    monkeypatch.setattr(demo, "TUTORIAL_GRAD", _nudged(demo.TUTORIAL_GRAD) + np.float32(1))
    status, out = _run(capsys, ["--no-torch", "--step", "3"])
    assert status == 1
    assert "check  gradient is the tutorial's printed one (to its 4 decimals): FAILED" in out


@pytest.mark.parametrize("how", ["not installed", "--no-torch"])
def test_runs_without_torch(capsys, monkeypatch, how):
    argv = ["--step", "3", "--step", "5"]
    if how == "not installed":
        monkeypatch.setattr(demo, "_import_torch", lambda: None)
    else:
        argv.append("--no-torch")
    status, out = _run(capsys, argv)
    assert status == 0, out
    assert "torch comparisons: SKIPPED" in out
    assert "torch    " not in out  # no torch result was printed
    assert "torch comparisons skipped" in out
