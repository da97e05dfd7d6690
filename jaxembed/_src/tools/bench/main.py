"""``jaxembed bench`` / ``python -m benchmarks``: the command line and the grid loop.

One process; for each shape (V, D, n, dtype) and id distribution, each operation is a group in
which every contender is first checked against the float64 reference, then timed in interleaved
rounds. Then the EmbeddingBag grid (``bag_fwd``, ``bag_fwdbwd``) and a small model's training
step (``model_step``). Results stream to the terminal and are written as JSON, a markdown
summary and a PNG.

The three output files always describe one run: the previous run's are removed at the start,
``bench.json`` is checkpointed (``"partial": true``) after every table shape, and the markdown and
PNG are written only once the JSON holds the records they show; every file is written under a
temporary name and renamed. A run stopped by SIGTERM or Ctrl-C writes all three for the records
it has (marked partial, with the signal) after the group it is timing, and exits with 128 + the
signal number; a run killed outright leaves its last checkpointed ``bench.json`` alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

import numpy as np

from jaxembed._src.tools.cli import ArgumentParser

# --quick stays near a minute on an idle 2-core machine: no Adam step (no target), bags in two
# modes (sum and max: the column loop and the segment path), the model step without the
# lookup-free variants (no share), no torch.compile.
QUICK = dict(
    V=[32768],
    D=[64],
    n=[4096],
    reps=3,
    warmup=1,
    target_ms=3.0,
    torch_compile=False,
    ops=None,
    bag_modes=("sum", "max"),
)
FULL = dict(
    V=[32768, 1048576],
    D=[64, 128, 768],
    n=[4096, 65536],
    reps=5,
    warmup=1,
    target_ms=5.0,
    torch_compile=True,
    ops=None,
    bag_modes=None,
)
# Operations also run with the skewed (zipf, padding) ids: those whose cost depends on the ids'
# collisions. The steps add a V x D optimizer pass to fwdbwd that does not.
SKEW_OPS = ["fwdbwd", "opt_fwdbwd"]
OUTPUTS = ("bench.json", "bench.md", "bench.png")


def _ints(s: str) -> list[int]:
    """Comma-separated positive integers (sizes and counts)."""
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {s!r}"
        ) from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return out


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            x = int(s)
        except ValueError:
            x = lo - 1
        if x < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}")
        return x

    return parse


def _positive_float(s: str) -> float:
    try:
        x = float(s)
    except ValueError:
        x = float("nan")
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return x


def _bag_configs(s: str) -> list[tuple[int, int, int, int]]:
    """``V:D:B:L,...``: vocabulary, row width, number of bags, mean bag length."""
    out = []
    for item in filter(None, s.split(",")):
        parts = item.split(":")
        try:
            vals = tuple(int(x) for x in parts)
        except ValueError:
            vals = ()
        if len(vals) != 4 or min(vals) < 1:
            raise argparse.ArgumentTypeError(
                f"expected V:D:B:L with four positive integers per bag configuration, got {item!r}"
            )
        out.append(vals)
    if not out:
        raise argparse.ArgumentTypeError("expected at least one V:D:B:L")
    return out


def _model_config(s: str):
    """``key=value,...`` overriding fields of the model's configuration."""
    from jaxembed._src.tools.bench import model

    fields = {f.name for f in dataclasses.fields(model.ModelConfig)}
    kw = {}
    for item in filter(None, s.split(",")):
        key, _, value = item.partition("=")
        if key not in fields or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(
                f"expected key=positive integer with key in {sorted(fields)}, got {item!r}"
            )
        kw[key] = int(value)
    cfg = dataclasses.replace(model.FULL, **kw)
    if cfg.dim % cfg.heads:
        raise argparse.ArgumentTypeError(
            f"dim ({cfg.dim}) must be a multiple of heads ({cfg.heads})"
        )
    return kw


def _names(allowed):
    def parse(s: str) -> list[str]:
        out = [x for x in s.split(",") if x]
        bad = [x for x in out if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return out

    return parse


def _all_ops():
    from jaxembed._src.tools.bench import bags, cases, model

    return (*cases.OPS, *bags.OPS, model.OP)


def build_parser() -> argparse.ArgumentParser:
    from jaxembed._src.tools.bench import cases

    ops = _all_ops()
    p = ArgumentParser(
        prog="jaxembed bench",
        description="Time jaxembed against flax, torch, torch.compile and memory ceilings "
        "(forward, dense backward, optax SGD/Adam steps, options, EmbeddingBag, a "
        "small model's training step). Defaults: the full grid.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one small shape of each kind, few rounds, no Adam step, bags in sum "
        "and max mode, the model step without its lookup share, no "
        "torch.compile (about a minute on 2 idle cores)",
    )
    p.add_argument("--V", type=_ints, help="vocabulary sizes, comma-separated")
    p.add_argument("--D", type=_ints, help="row widths")
    p.add_argument("--n", type=_ints, help="tokens per batch")
    p.add_argument("--dtypes", type=_names(cases.DTYPES), default=list(cases.DTYPES))
    p.add_argument(
        "--dists", type=_names(cases.DISTS), default=list(cases.DISTS), help="id distributions"
    )
    p.add_argument(
        "--skew-ops",
        type=_names(cases.OPS),
        default=SKEW_OPS,
        help="operations also run with the zipf and padding ids (default "
        "%(default)s; the others run with uniform ids only)",
    )
    p.add_argument(
        "--ops",
        type=_names(ops),
        help=f"operations (default: all; --quick: all but adam): {list(ops)}",
    )
    p.add_argument(
        "--bag-configs",
        type=_bag_configs,
        help="EmbeddingBag configurations V:D:B:L (vocabulary, row width, bags, mean "
        "bag length), comma-separated (default: the RESULTS.md grid; --quick: "
        "its first)",
    )
    p.add_argument(
        "--model-config",
        type=_model_config,
        default={},
        help="the model step's configuration as key=value pairs, e.g. "
        "batch=8,seq=64 (fields of ModelConfig in tools/bench/model.py; default: "
        "a 2-layer encoder with a 30522 x 384 table, batch 16x128, --quick 4x32)",
    )
    p.add_argument(
        "--reps", type=_int_at_least(1), help="interleaved rounds (samples per contender)"
    )
    p.add_argument(
        "--warmup", type=_int_at_least(0), help="untimed calls per contender before timing"
    )
    p.add_argument("--target-ms", type=_positive_float, help="minimum duration of one sample")
    p.add_argument("--no-torch", action="store_true", help="skip torch (eager and compiled)")
    p.add_argument(
        "--torch-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile (inductor); compile times are reported "
        "separately (default: on, off with --quick)",
    )
    p.add_argument(
        "--mem-gb",
        type=_positive_float,
        help="memory budget (default 70%% of available RAM, or 80%% of device memory)",
    )
    p.add_argument(
        "--out",
        default="bench_results",
        help="directory for bench.json, bench.md and bench.png (default %(default)s)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument(
        "--report",
        metavar="BENCH_JSON",
        help="time nothing: re-evaluate the targets of an earlier run's JSON and "
        "rewrite its markdown and PNG into --out",
    )
    # Tests run the torch.compile code path with a fast backend; timings need inductor.
    p.add_argument("--torch-compile-backend", default="inductor", help=argparse.SUPPRESS)
    return p


def _read_report(parser, path: str) -> dict:
    """An earlier run's bench.json, or a one-line usage error (exit 2)."""
    try:
        with open(path) as fh:
            result = json.load(fh)
    except OSError as e:
        parser.error(f"argument --report: cannot read {path!r}: {e.strerror or e}")
    except (ValueError, UnicodeDecodeError) as e:
        parser.error(f"argument --report: {path!r} is not JSON ({e})")
    if not isinstance(result, dict) or not {"records", "settings"} <= set(result):
        parser.error(
            f"argument --report: {path!r} is not a jaxembed bench.json (it needs "
            "'records' and 'settings')"
        )
    return result


def _check_out(parser, out: str) -> None:
    """``--out`` must be a directory we can create and write to, checked before any timing."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".bench-write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        parser.error(f"argument --out: cannot write to directory {out!r}: {e.strerror or e}")


class Outputs:
    """``bench.json``, ``bench.md`` and ``bench.png`` in one directory, describing one run.

    Each file is written to a temporary name in the same directory and renamed over the old one
    (atomic on POSIX). ``start`` removes the previous run's three; ``checkpoint`` rewrites only the
    JSON; ``finish`` writes the JSON, then the markdown, then the PNG, so that a file present is
    never ahead of or behind the JSON.
    """

    def __init__(self, out: str, plot: bool):
        self.out, self.plot = out, plot

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def start(self) -> None:
        for name in reversed(OUTPUTS):  # PNG and markdown first: the JSON is the run's record
            try:
                os.remove(self.path(name))
            except FileNotFoundError:
                pass

    def _atomic(self, name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would give
            os.replace(tmp, self.path(name))
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise

    def checkpoint(self, result: dict) -> None:
        self._atomic(
            "bench.json", lambda fh: fh.write(json.dumps(result, indent=1, default=str).encode())
        )

    def finish(self, result: dict, notes: list) -> list[str]:
        from jaxembed._src.tools.bench import report

        self.checkpoint(result)
        self._atomic("bench.md", lambda fh: fh.write(report.markdown(result).encode()))
        written = [self.path("bench.json"), self.path("bench.md")]
        if self.plot and importlib.util.find_spec("matplotlib") is None:
            notes.append("matplotlib not installed: no PNG (pip install 'jaxembed[bench]')")
        elif self.plot:
            made = []
            self._atomic("bench.png", lambda fh: made.append(report.plot(result, fh)))
            if made[0] is None:  # no timing with a bytes model to plot
                os.remove(self.path("bench.png"))
            else:
                written.append(self.path("bench.png"))
        return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run: stop, write what was measured, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Stop:
    """The SIGTERM/SIGINT handler: it records the signal, and the grid loop stops at the next
    group (:meth:`check`). It does not raise at once: Python may run it inside XLA's
    garbage-collection callback, where an exception is swallowed (and printed). A second signal
    raises :class:`Interrupted` immediately."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def check(self):
        if self.signum is not None:
            raise Interrupted(self.signum)


def _report_only(args, parser) -> int:
    from jaxembed._src.tools.bench import report

    result = _read_report(parser, args.report)
    _check_out(parser, args.out)
    result["targets"] = report.evaluate_targets(result["records"], result["settings"])
    outputs = Outputs(args.out, not args.no_plot)
    outputs.start()
    outputs.finish(result, result.setdefault("notes", []))
    print(report.targets_text(result["targets"]))
    return 0


def _mem_budget(args) -> float:
    import jax

    if args.mem_gb:
        return args.mem_gb * 2**30
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return 0.8 * stats["bytes_limit"]
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable"))
        return 0.7 * avail
    except (OSError, StopIteration):
        return 8 * 2**30


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        return _report_only(args, parser)
    _check_out(parser, args.out)
    preset = QUICK if args.quick else FULL
    for key in ("V", "D", "n", "reps", "warmup", "target_ms", "torch_compile"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.ops is None:
        args.ops = [op for op in _all_ops() if not (args.quick and op == "adam")]
    args.bag_modes = preset["bag_modes"]

    from jaxembed._src.tools.bench import cases, report, timing

    torch, tdev = (None, "--no-torch: torch skipped") if args.no_torch else cases.torch_device()
    notes = [] if torch is not None else [tdev]
    compile_backend = None
    if torch is not None and args.torch_compile:
        compile_backend, why = cases.torch_compile_backend(torch, args.torch_compile_backend)
        if compile_backend is None:
            notes.append(why)
            print("note:", why)
    info = timing.settings()
    budget = _mem_budget(args)
    print("\n".join(timing.settings_lines(info)))
    print(
        f"memory budget {budget / 2**30:.1f} GiB; rounds {args.reps}, warm-up {args.warmup}, "
        f"sample >= {args.target_ms} ms; torch.compile "
        f"{compile_backend or 'off'}; ratios are jaxembed's time / the other's "
        "(< 1: jaxembed faster)"
    )

    records: list[dict] = []
    outputs = Outputs(args.out, not args.no_plot)
    outputs.start()
    t_start = time.perf_counter()
    state: dict[str, str | None] = dict(stopped_by=None)

    def result(partial: bool) -> dict:
        return dict(
            settings=info,
            args=dict(vars(args)),
            bytes_models=report.BYTES_MODELS_TEXT,
            notes=notes,
            elapsed_s=time.perf_counter() - t_start,
            partial=partial,
            stopped_by=state["stopped_by"],
            records=records,
            targets=report.evaluate_targets(records, info),
        )

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run_grid(
            args,
            torch,
            tdev,
            compile_backend,
            budget,
            records,
            notes,
            lambda: outputs.checkpoint(result(partial=True)),
            stop.check,
        )
    except Interrupted as e:
        state["stopped_by"] = signal.Signals(e.signum).name
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = result(partial=state["stopped_by"] is not None)
    written = outputs.finish(final, notes)
    print()
    print(report.targets_text(final["targets"]))
    for note in notes:
        print("note:", note)
    failed = [r for r in records if not r["check"]["ok"]]
    for r in failed:
        print(
            f"CHECK FAILED: {r['contender']} {r['op']} {r['shape']} {r['dist']}: "
            f"{r['check']['detail']}",
            file=sys.stderr,
        )
    print(f"wrote {', '.join(written)} in {final['elapsed_s']:.0f} s")
    if state["stopped_by"]:
        print(
            f"jaxembed bench: stopped by {state['stopped_by']}; the outputs hold the "
            f"{len(records)} records measured so far (marked partial)",
            file=sys.stderr,
        )
        return 128 + signal.Signals[state["stopped_by"]].value
    return 1 if failed else 0


def _run_grid(
    args, torch, tdev, compile_backend, budget, records, notes, checkpoint, check_stop
) -> None:
    """Every selected group, appended to ``records``; ``checkpoint()`` after each table shape;
    ``check_stop()`` (raises :class:`Interrupted`) before each group."""
    import jax

    from jaxembed._src.tools.bench import bags, cases, model, report

    rng = np.random.default_rng(args.seed)
    grid_ops = [op for op in args.ops if op in cases.OPS]
    for V in args.V if grid_ops else []:
        for D in args.D:
            for dtype in args.dtypes:
                shape0 = cases.Shape(V, D, 0, dtype)
                vd = V * D * shape0.itemsize
                # The host table, its device copy (shared on CPU) and torch's view of it.
                base = vd * (1 if jax.default_backend() == "cpu" else 2)
                if base + 2 * vd > budget:
                    notes.append(f"{shape0.label()}: table does not fit the memory budget, skipped")
                    print("SKIP", notes[-1])
                    continue
                W_np = rng.standard_normal((V, D), dtype=np.float32).astype(cases.DTYPES[dtype])
                W_dev = jax.device_put(W_np)  # zero-copy on CPU when aligned
                jax_ops = {
                    name: cases.JaxOps(*pair) for name, pair in cases.jax_lookups(shape0).items()
                }
                opt_ops = cases.OptionOps()
                torch_ops = {}
                if torch is not None:
                    torch_ops[cases.TORCH] = cases.TorchOps(torch, tdev)
                    if compile_backend:
                        torch_ops[cases.TORCH_COMPILE] = cases.TorchOps(
                            torch, tdev, compile_backend
                        )
                # partial, not a closure: the shape and dtype of this iteration are bound now.
                zeros = jax.jit(functools.partial(jax.numpy.zeros, (V, D), cases.DTYPES[dtype]))
                for n in args.n:
                    shape = cases.Shape(V, D, n, dtype)
                    for dist in args.dists:
                        ids = cases.make_ids(dist, V, n, rng)
                        g = rng.standard_normal((n, D), dtype=np.float32).astype(W_np.dtype)
                        pb = cases.Problem(shape, W_np, W_dev, ids, g)
                        # XLA:CPU turns a 16-bit float scatter into a float32 one with V x D
                        # float32 temporaries: budget the transients as if the table were f32.
                        work_vd = (
                            V * D * 4
                            if jax.default_backend() == "cpu" and shape.itemsize == 2
                            else vd
                        )
                        ctx = dict(
                            shape=shape,
                            dist=dist,
                            budget=budget,
                            base=base,
                            vd=work_vd,
                            notes=notes,
                        )
                        for op in grid_ops:
                            if dist != "uniform" and op not in args.skew_ops:
                                continue
                            check_stop()
                            benches, extra = _benches(
                                op, pb, jax_ops, opt_ops, torch_ops, zeros, ctx
                            )
                            if not benches:
                                continue
                            recs = _run_group(op, shape, dist, benches, extra, args)
                            records.extend(recs)
                            report.print_group(recs, records)
                            del benches
                            cases.free_memory()
                        del pb
                        for t_ops in torch_ops.values():
                            t_ops._key = None
                        cases.free_memory()
                del W_np, W_dev, jax_ops, opt_ops, torch_ops
                checkpoint()  # a run cut short still leaves its results
                jax.clear_caches()
                cases.free_memory()

    bag_ops = [op for op in args.ops if op in bags.OPS]
    configs = args.bag_configs or (bags.QUICK_CONFIGS if args.quick else bags.FULL_CONFIGS)
    for shape, layout, mode, op, n, benches in bags.groups(
        configs if bag_ops else [],
        bag_ops,
        torch,
        compile_backend,
        rng,
        args.bag_modes or bags.MODES,
    ):
        check_stop()
        dist = f"{layout} {mode}"
        extra = dict(bags=shape.bags, length=shape.length, layout=layout, mode=mode)
        recs = _run_group(
            op,
            shape,
            dist,
            benches,
            extra,
            args,
            meta=dict(V=shape.V, D=shape.D, n=n, dtype="float32"),
            nbytes=bags.bytes_model(op, shape, n),
        )
        records.extend(recs)
        report.print_group(recs, records)
    if bag_ops:
        checkpoint()
        jax.clear_caches()
        cases.free_memory()

    if model.OP in args.ops:
        check_stop()
        cfg = dataclasses.replace(model.QUICK if args.quick else model.FULL, **args.model_config)
        # --quick: the step times only; the lookup's share needs three more steps compiled.
        benches = model.benches(cfg, torch, compile_backend, rng, without_lookup=not args.quick)
        recs = _run_group(
            model.OP,
            cfg,
            "uniform",
            benches,
            dict(model=cfg.label()),
            args,
            meta=dict(V=cfg.vocab, D=cfg.dim, n=cfg.batch * cfg.seq, dtype="float32"),
            nbytes=0,
        )
        records.extend(recs)
        report.print_group(recs, records)
        checkpoint()


def _benches(op, pb, jax_ops, opt_ops, torch_ops, zeros, ctx):
    """The contenders of one group, within the memory budget. Returns (benches, extra-info)."""
    from jaxembed._src.tools.bench import cases

    vd, room = ctx["vd"], ctx["budget"] - ctx["base"]
    benches: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if op in ("fwd", "fwdbwd"):
        if room < 3 * vd:
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: over the memory budget, skipped")
            return {}, extra
        for name, ops in jax_ops.items():
            benches[name] = ops.bench(op, pb)
        for name, t_ops in torch_ops.items():
            benches[name] = t_ops.bench(op, pb)
        if op == "fwd":
            benches[cases.COPY], extra["copy_impl"] = cases.copy_ceiling(pb)
            benches[cases.DISPATCH] = cases.dispatch_floor(pb)
        else:
            benches[cases.ZERO] = cases.zero_ceiling(pb, zeros)
    elif op in ("sgd", "adam"):
        # Alive during a round: each contender's table (+ two moments for Adam) and one
        # transient V x D gradient.
        per = (1 + (2 if op == "adam" else 0)) * vd
        keep: list[str] = []
        for name in cases.STEP_PRIORITY:
            if name in (cases.TORCH, cases.TORCH_COMPILE) and name not in torch_ops:
                continue
            if vd + per * (len(keep) + 1) <= room:
                keep.append(name)
        if len(keep) < 2:
            ctx["notes"].append(
                f"{ctx['shape'].label()} {op}: fewer than two contenders fit "
                "the memory budget, skipped"
            )
            return {}, extra
        dropped = [
            c
            for c in cases.STEP_PRIORITY
            if c not in keep and (c not in (cases.TORCH, cases.TORCH_COMPILE) or c in torch_ops)
        ]
        if dropped and ctx["dist"] == "uniform":
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: memory budget: dropped {dropped}")
        for name in keep:
            benches[name] = (
                torch_ops[name].bench(op, pb) if name in torch_ops else jax_ops[name].bench(op, pb)
            )
    else:
        if room < 3 * vd:
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: over the memory budget, skipped")
            return {}, extra
        options = ("plain", "max_norm") if op == "opt_fwd" else cases.OPTIONS
        for option in options:
            benches[option] = opt_ops.bench(op, option, pb)
    return benches, extra


def _run_group(op, shape, dist, benches, extra, args, meta=None, nbytes=None) -> list[dict]:
    """Checks every contender (its first call, timed: it includes compilation), then times the
    ones that passed in interleaved rounds. ``meta``/``nbytes`` for groups that are not a
    ``cases.Shape`` (bags, the model)."""
    from jaxembed._src.tools.bench import cases, timing

    checks, timed, first_call = {}, {}, {}
    for name, b in benches.items():
        try:
            t0 = time.perf_counter()
            out = b.call()
            first_call[name] = time.perf_counter() - t0
            checks[name] = b.check(out)
            del out
        except Exception as e:  # a contender that cannot run is reported, not timed
            checks[name] = dict(ok=False, max_err=None, detail=f"error: {type(e).__name__}: {e}")
        if checks[name]["ok"]:
            timed[name] = b.call
    res = timing.run_interleaved(
        timed, reps=args.reps, warmup=args.warmup, target_s=args.target_ms / 1e3
    )
    recs = []
    if meta is None:
        meta = dict(V=shape.V, D=shape.D, n=shape.n, dtype=shape.dtype)
    for name in benches:
        bop = name if name in (cases.COPY, cases.ZERO, cases.DISPATCH) else op
        size = cases.bytes_model(bop, shape) if nbytes is None else nbytes
        t = res.get(name)
        rec = dict(
            shape=shape.label(),
            **meta,
            dist=dist,
            op=op,
            contender=name,
            bytes=size,
            check=checks[name],
            bytes_model=bop,
            **extra,
        )
        if name in first_call:
            rec["first_call_ms"] = first_call[name] * 1e3
        if t is not None:
            rec.update(
                median_ms=t["median"] * 1e3,
                p25_ms=t["p25"] * 1e3,
                p75_ms=t["p75"] * 1e3,
                min_ms=t["min"] * 1e3,
                max_ms=t["max"] * 1e3,
                rel_iqr=t["rel_iqr"],
                reps=t["reps"],
                inner=t["inner"],
            )
            if size:
                rec["gbps"] = size / t["median"] / 1e9
            # The first call's excess over a timed call: compilation (jax.jit, torch.compile).
            rec["compile_s"] = max(0.0, first_call[name] - t["median"])
        recs.append(rec)
    return recs
