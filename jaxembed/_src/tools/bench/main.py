"""``jaxembed bench`` / ``python -m benchmarks``: the command line and the grid loop.

One process; for each shape (V, D, n, dtype) and id distribution, each operation is a group in
which every contender is first checked against the float64 reference, then timed in interleaved
rounds. Results stream to the terminal and are written as JSON, a markdown summary and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

QUICK = dict(V=[32768], D=[64], n=[4096], reps=3, warmup=1, target_ms=3.0)
FULL = dict(V=[32768, 1048576], D=[64, 128, 768], n=[4096, 65536], reps=5, warmup=1,
            target_ms=5.0)
# Operations also run with the skewed (zipf, padding) ids: those whose cost depends on the ids'
# collisions. The steps add a V x D optimizer pass to fwdbwd that does not.
SKEW_OPS = ["fwdbwd", "opt_fwdbwd"]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _names(allowed):
    def parse(s: str) -> list[str]:
        out = [x for x in s.split(",") if x]
        bad = [x for x in out if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return out
    return parse


def build_parser() -> argparse.ArgumentParser:
    from jaxembed._src.tools.bench import cases

    p = argparse.ArgumentParser(
        prog="jaxembed bench",
        description="Time jaxembed against flax, torch and memory ceilings (forward, dense "
                    "backward, optax SGD/Adam steps, options). Defaults: the full grid.")
    p.add_argument("--quick", action="store_true",
                   help=f"one small shape, few rounds (under a minute): {QUICK}")
    p.add_argument("--V", type=_ints, help="vocabulary sizes, comma-separated")
    p.add_argument("--D", type=_ints, help="row widths")
    p.add_argument("--n", type=_ints, help="tokens per batch")
    p.add_argument("--dtypes", type=_names(cases.DTYPES), default=list(cases.DTYPES))
    p.add_argument("--dists", type=_names(cases.DISTS), default=list(cases.DISTS),
                   help="id distributions")
    p.add_argument("--skew-ops", type=_names(cases.OPS), default=SKEW_OPS,
                   help="operations also run with the zipf and padding ids (default "
                        "%(default)s; the others run with uniform ids only)")
    p.add_argument("--ops", type=_names(cases.OPS), default=list(cases.OPS))
    p.add_argument("--reps", type=int, help="interleaved rounds (samples per contender)")
    p.add_argument("--warmup", type=int, help="untimed calls per contender before timing")
    p.add_argument("--target-ms", type=float, help="minimum duration of one sample")
    p.add_argument("--no-torch", action="store_true", help="skip torch.nn.Embedding")
    p.add_argument("--mem-gb", type=float,
                   help="memory budget (default 70%% of available RAM, or 80%% of device memory)")
    p.add_argument("--out", default="bench_results",
                   help="directory for bench.json, bench.md and bench.png (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="BENCH_JSON",
                   help="time nothing: re-evaluate the targets of an earlier run's JSON and "
                        "rewrite its markdown and PNG into --out")
    return p


def _report_only(args) -> int:
    from jaxembed._src.tools.bench import report

    with open(args.report) as fh:
        result = json.load(fh)
    result["targets"] = report.evaluate_targets(result["records"], result["settings"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    with open(os.path.join(args.out, "bench.md"), "w") as fh:
        fh.write(report.markdown(result))
    if not args.no_plot:
        report.plot(result, os.path.join(args.out, "bench.png"))
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
    args = build_parser().parse_args(argv)
    if args.report:
        return _report_only(args)
    preset = QUICK if args.quick else FULL
    for key in ("V", "D", "n", "reps", "warmup", "target_ms"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])

    import jax

    from jaxembed._src.tools.bench import cases, report, timing

    torch, tdev = (None, "--no-torch: torch.nn.Embedding skipped") if args.no_torch else \
        cases.torch_device()
    notes = [] if torch is not None else [tdev]
    info = timing.settings()
    budget = _mem_budget(args)
    print("\n".join(timing.settings_lines(info)))
    print(f"memory budget {budget / 2**30:.1f} GiB; rounds {args.reps}, warm-up {args.warmup}, "
          f"sample >= {args.target_ms} ms; ratios are jaxembed's time / the other's "
          "(< 1: jaxembed faster)")

    records: list[dict] = []
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()
    for V in args.V:
        for D in args.D:
            for dtype in args.dtypes:
                shape0 = cases.Shape(V, D, 0, dtype)
                vd = V * D * shape0.itemsize
                # The host table, its device copy (shared on CPU) and torch's view of it.
                base = vd * (1 if jax.default_backend() == "cpu" else 2)
                if base + 2 * vd > budget:
                    notes.append(f"{shape0.label()}: table does not fit the memory budget, "
                                 "skipped")
                    print("SKIP", notes[-1])
                    continue
                W_np = rng.standard_normal((V, D), dtype=np.float32).astype(cases.DTYPES[dtype])
                W_dev = jax.device_put(W_np)  # zero-copy on CPU when aligned
                jax_ops = {name: cases.JaxOps(*pair)
                           for name, pair in cases.jax_lookups(shape0).items()}
                opt_ops = cases.OptionOps()
                torch_ops = cases.TorchOps(torch, tdev) if torch is not None else None
                zeros = jax.jit(lambda: jax.numpy.zeros((V, D), cases.DTYPES[dtype]))
                for n in args.n:
                    shape = cases.Shape(V, D, n, dtype)
                    for dist in args.dists:
                        ids = cases.make_ids(dist, V, n, rng)
                        g = rng.standard_normal((n, D), dtype=np.float32).astype(W_np.dtype)
                        pb = cases.Problem(shape, W_np, W_dev, ids, g)
                        # XLA:CPU turns a 16-bit float scatter into a float32 one with V x D
                        # float32 temporaries: budget the transients as if the table were f32.
                        work_vd = (V * D * 4 if jax.default_backend() == "cpu"
                                   and shape.itemsize == 2 else vd)
                        ctx = dict(shape=shape, dist=dist, budget=budget, base=base,
                                   vd=work_vd, notes=notes)
                        for op in args.ops:
                            if dist != "uniform" and op not in args.skew_ops:
                                continue
                            benches, extra = _benches(op, pb, jax_ops, opt_ops, torch_ops,
                                                      zeros, ctx)
                            if not benches:
                                continue
                            recs = _run_group(op, shape, dist, benches, extra, args)
                            records.extend(recs)
                            report.print_group(recs, records)
                            del benches
                            cases.free_memory()
                        del pb
                        if torch_ops is not None:
                            torch_ops._key = None
                        cases.free_memory()
                del W_np, W_dev, jax_ops, opt_ops, torch_ops
                # Checkpoint, so that a run cut short (a timeout) still leaves its results.
                _write_json(args, info, notes, records, time.perf_counter() - t_start,
                            partial=True)
                jax.clear_caches()
                cases.free_memory()

    result = _write_json(args, info, notes, records, time.perf_counter() - t_start, partial=False)
    elapsed = result["elapsed_s"]
    json_path = os.path.join(args.out, "bench.json")
    md_path = os.path.join(args.out, "bench.md")
    with open(md_path, "w") as fh:
        fh.write(report.markdown(result))
    written = [json_path, md_path]
    if not args.no_plot:
        png = report.plot(result, os.path.join(args.out, "bench.png"))
        if png:
            written.append(png)
        else:
            notes.append("matplotlib not installed: no PNG (pip install 'jaxembed[bench]')")
    print()
    print(report.targets_text(result["targets"]))
    for note in notes:
        print("note:", note)
    failed = [r for r in records if not r["check"]["ok"]]
    for r in failed:
        print(f"CHECK FAILED: {r['contender']} {r['op']} {r['shape']} {r['dist']}: "
              f"{r['check']['detail']}", file=sys.stderr)
    print(f"wrote {', '.join(written)} in {elapsed:.0f} s")
    return 1 if failed else 0


def _write_json(args, info, notes, records, elapsed, partial) -> dict:
    from jaxembed._src.tools.bench import report

    result = dict(settings=info, args=dict(vars(args)), bytes_models=report.BYTES_MODELS_TEXT,
                  notes=notes, elapsed_s=elapsed, partial=partial, records=records,
                  targets=report.evaluate_targets(records, info))
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, "bench.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    os.replace(tmp, os.path.join(args.out, "bench.json"))
    return result


def _benches(op, pb, jax_ops, opt_ops, torch_ops, zeros, ctx):
    """The contenders of one group, within the memory budget. Returns (benches, extra-info)."""
    from jaxembed._src.tools.bench import cases

    vd, room = ctx["vd"], ctx["budget"] - ctx["base"]
    benches, extra = {}, {}
    if op in ("fwd", "fwdbwd"):
        if room < 3 * vd:
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: over the memory budget, skipped")
            return {}, extra
        for name, ops in jax_ops.items():
            benches[name] = ops.bench(op, pb)
        if torch_ops is not None:
            benches[cases.TORCH] = torch_ops.bench(op, pb)
        if op == "fwd":
            benches[cases.COPY], extra["copy_impl"] = cases.copy_ceiling(pb)
            benches[cases.DISPATCH] = cases.dispatch_floor(pb)
        else:
            benches[cases.ZERO] = cases.zero_ceiling(pb, zeros)
    elif op in ("sgd", "adam"):
        # Alive during a round: each contender's table (+ two moments for Adam) and one
        # transient V x D gradient.
        per = (1 + (2 if op == "adam" else 0)) * vd
        keep = []
        for name in cases.STEP_PRIORITY:
            if name == cases.TORCH and torch_ops is None:
                continue
            if vd + per * (len(keep) + 1) <= room:
                keep.append(name)
        if len(keep) < 2:
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: fewer than two contenders fit "
                                "the memory budget, skipped")
            return {}, extra
        dropped = [c for c in cases.STEP_PRIORITY if c not in keep
                   and (c != cases.TORCH or torch_ops is not None)]
        if dropped and ctx["dist"] == "uniform":
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: memory budget: dropped {dropped}")
        for name in keep:
            benches[name] = (torch_ops.bench(op, pb) if name == cases.TORCH
                             else jax_ops[name].bench(op, pb))
    else:
        if room < 3 * vd:
            ctx["notes"].append(f"{ctx['shape'].label()} {op}: over the memory budget, skipped")
            return {}, extra
        options = ("plain", "max_norm") if op == "opt_fwd" else cases.OPTIONS
        for option in options:
            benches[option] = opt_ops.bench(op, option, pb)
    return benches, extra


def _run_group(op, shape, dist, benches, extra, args) -> list[dict]:
    from jaxembed._src.tools.bench import cases, timing

    checks, timed = {}, {}
    for name, b in benches.items():
        try:
            out = b.call()
            checks[name] = b.check(out)
            del out
        except Exception as e:  # a contender that cannot run is reported, not timed
            checks[name] = dict(ok=False, max_err=None, detail=f"error: {type(e).__name__}: {e}")
        if checks[name]["ok"]:
            timed[name] = b.call
    res = timing.run_interleaved(timed, reps=args.reps, warmup=args.warmup,
                                 target_s=args.target_ms / 1e3)
    recs = []
    for name in benches:
        bop = name if name in (cases.COPY, cases.ZERO, cases.DISPATCH) else op
        nbytes = cases.bytes_model(bop, shape)
        t = res.get(name)
        rec = dict(shape=shape.label(), V=shape.V, D=shape.D, n=shape.n, dtype=shape.dtype,
                   dist=dist, op=op, contender=name, bytes=nbytes, check=checks[name],
                   bytes_model=bop, **extra)
        if t is not None:
            rec.update(median_ms=t["median"] * 1e3, p25_ms=t["p25"] * 1e3, p75_ms=t["p75"] * 1e3,
                       min_ms=t["min"] * 1e3, max_ms=t["max"] * 1e3, rel_iqr=t["rel_iqr"],
                       reps=t["reps"], inner=t["inner"], gbps=nbytes / t["median"] / 1e9)
        recs.append(rec)
    return recs
