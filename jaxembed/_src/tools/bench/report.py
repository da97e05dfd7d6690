"""Terminal table, target evaluation, markdown summary and PNG plot of the harness's records."""

from __future__ import annotations

import statistics

from jaxembed._src.tools.bench import cases

BYTES_MODELS_TEXT = {
    "fwd, opt_fwd, ceiling:copy": "2nD (read n rows, write n rows)",
    "fwdbwd, opt_fwdbwd": "VD + 4nD (fwd 2nD, read g, scatter into the zero-filled V x D grad)",
    "sgd": "4VD + 4nD (fwd+bwd, read W and G, write W)",
    "adam": "8VD + 4nD (sgd plus read+write of both moments)",
    "ceiling:zero-fill": "VD",
    "floor:dispatch": "8n (n int32 ids read and written)",
    "unit": "elements times the dtype's itemsize; GB = 1e9 bytes",
}

OPTION_OPS = ("opt_fwd", "opt_fwdbwd")
BAG_OPS = ("bag_fwd", "bag_fwdbwd")
MODEL_OP = "model_step"
ALL_OPS = (*cases.OPS, *BAG_OPS, MODEL_OP)
NO_LOOKUP = " -lookup"  # model contenders without the lookup (see model.py)
BYTES_MODELS_TEXT = dict(
    BYTES_MODELS_TEXT,
    **{
        "bag_fwd": "(N + B) D (read the N rows, write the B bag results)",
        "bag_fwdbwd": "VD + 2 (N + B) D (bag_fwd, read the B output gradients, scatter N rows into "
        "the zero-filled V x D gradient)",
        "model_step": "none (a whole training step: time only)",
    },
)


def _key(r):
    return (r["shape"], r["dist"], r["op"])


def _group(records, r):
    return {x["contender"]: x for x in records if _key(x) == _key(r)}


def _copy_gbps(records, shape, dist):
    for x in records:
        if (x["shape"], x["dist"], x["contender"]) == (shape, dist, cases.COPY) and "gbps" in x:
            return x["gbps"]
    return None


def ratio_column(rec, group) -> float | None:
    """opt groups: this option's time / the plain path's; others: jaxembed's time / this one's."""
    if "median_ms" not in rec:
        return None
    ref = group.get("plain" if rec["op"] in OPTION_OPS else cases.SUBJECT)
    if ref is None or "median_ms" not in ref:
        return None
    if rec["op"] in OPTION_OPS:
        return rec["median_ms"] / ref["median_ms"]
    return ref["median_ms"] / rec["median_ms"]


def ceiling_column(rec, group, records) -> float | None:
    """Fraction of the ceiling: copy time / time for the forward (same bytes), zero-fill time /
    time for fwd+bwd, and effective GB/s / copy GB/s for the steps."""
    if "median_ms" not in rec or rec["op"] in (*BAG_OPS, MODEL_OP):
        return None
    op = rec["op"]
    if op in ("fwd", "opt_fwd") or op in ("fwdbwd", "opt_fwdbwd"):
        ceil = cases.COPY if op in ("fwd", "opt_fwd") else cases.ZERO
        c = group.get(ceil) or _group(records, dict(rec, op=op.replace("opt_", ""))).get(ceil)
        if c is None or "median_ms" not in c:
            return None
        return c["median_ms"] / rec["median_ms"]
    cg = _copy_gbps(records, rec["shape"], rec["dist"])
    return rec["gbps"] / cg if cg else None


def print_group(recs, records) -> None:
    if not recs:
        return
    r0 = recs[0]
    group = {r["contender"]: r for r in recs}
    ratio_name = "x/plain" if r0["op"] in OPTION_OPS else "jaxembed/x"
    print(
        f"\n== {r0['shape']} | {r0['dist']} | {r0['op']} (bytes model: {r0['bytes'] / 1e6:.1f} MB)"
    )
    print(
        f"  {'contender':<24}{'median ms':>11}{'IQR %':>8}{'GB/s':>8}{ratio_name:>12}"
        f"{'ceiling':>9}{'compile s':>11}  check"
    )
    for r in recs:
        ratio, ceil = ratio_column(r, group), ceiling_column(r, group, records)
        if "median_ms" in r:
            gbps = f"{r['gbps']:.1f}" if "gbps" in r else "-"
            print(
                f"  {r['contender']:<24}{r['median_ms']:>11.3f}{100 * r['rel_iqr']:>8.1f}"
                f"{gbps:>8}{_f(ratio):>12}{_f(ceil, pct=True):>9}"
                f"{r.get('compile_s', 0.0):>11.2f}  {'ok' if r['check']['ok'] else 'FAIL'}"
            )
        else:
            print(
                f"  {r['contender']:<24}{'-':>11}{'':>8}{'':>8}{'':>12}{'':>9}{'':>11}  "
                f"FAIL {r['check']['detail']}"
            )


def _f(x, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


# ---------------------------------------------------------------------------------------------
# Targets (issue 5)
# ---------------------------------------------------------------------------------------------


def _pairs(records, op, a, b, dists=None):
    """(record a, record b) per group of ``op`` where both were timed."""
    out = []
    for r in records:
        if r["op"] == op and r["contender"] == a and "median_ms" in r:
            if dists and r["dist"] not in dists:
                continue
            o = _group(records, r).get(b)
            if o is not None and "median_ms" in o:
                out.append((r, o))
    return out


def _target(tid, text, pairs, threshold, higher_is_better=False, value=None, on_median=False):
    """Evaluates ``value(a, b)`` (default a/b) against ``threshold`` for every pair; with
    ``on_median`` the status is that of the median over the pairs (the issue's bag targets)."""
    rows = []
    for a, b in pairs:
        v = value(a, b) if value else a["median_ms"] / b["median_ms"]
        noise = max(a["rel_iqr"], b["rel_iqr"])
        met = v >= threshold if higher_is_better else v <= threshold
        # "within noise": the miss is smaller than the larger of the two spreads.
        near = (
            (v * (1 + noise) >= threshold) if higher_is_better else (v / (1 + noise) <= threshold)
        )
        rows.append(
            dict(
                shape=a["shape"],
                dist=a["dist"],
                value=v,
                noise=noise,
                met=met,
                within_noise=bool(met or near),
            )
        )
    vals = [r["value"] for r in rows]
    worst = (min(vals) if higher_is_better else max(vals)) if vals else None
    median = statistics.median(vals) if vals else None
    if not rows:
        status = "no data"
    elif on_median:
        status = (
            "met"
            if (median >= threshold if higher_is_better else median <= threshold)
            else "missed"
        )
    else:
        status = "met" if all(r["met"] for r in rows) else "missed"
    return dict(
        id=tid,
        text=text,
        threshold=threshold,
        higher_is_better=higher_is_better,
        n=len(rows),
        n_met=sum(r["met"] for r in rows),
        n_within_noise=sum(r["within_noise"] for r in rows),
        median=median,
        worst=worst,
        status=status,
        on_median=on_median,
        rows=rows,
    )


def _bag_pairs(records, op, layout, b):
    return [(r, o) for r, o in _pairs(records, op, cases.SUBJECT, b) if r.get("layout") == layout]


def evaluate_targets(records, info) -> list[dict]:
    S, T = cases.SUBJECT, cases.TORCH
    llc = info.get("llc_bytes") or 32 << 20
    # Out of cache: the n x D output alone fills the last-level cache (the rows read as many).
    out_of_cache = [
        (c, a)
        for a, c in _pairs(records, "fwd", S, cases.COPY)
        if a["n"] * a["D"] * cases.DTYPES[a["dtype"]].itemsize >= llc
    ]
    non_uniform = []
    for r in records:
        if (
            r["op"] == "fwdbwd"
            and r["contender"] == S
            and r["dist"] != "uniform"
            and "median_ms" in r
        ):
            u = next(
                (
                    x
                    for x in records
                    if (x["shape"], x["op"], x["contender"], x["dist"])
                    == (r["shape"], "fwdbwd", S, "uniform")
                    and "median_ms" in x
                ),
                None,
            )
            if u is not None:
                non_uniform.append((r, u))
    return [
        _target(
            "fwd_vs_flax_nnx",
            "forward: jaxembed / flax.nnx.Embed <= 1.0",
            _pairs(records, "fwd", S, "flax.nnx"),
            1.0,
        ),
        _target(
            "fwd_vs_torch", "forward: jaxembed / torch <= 1.0", _pairs(records, "fwd", S, T), 1.0
        ),
        _target(
            "fwd_vs_copy",
            "forward out of cache (n*D*itemsize >= LLC): copy time / jaxembed time >= 0.8",
            out_of_cache,
            0.8,
            higher_is_better=True,
        ),
        _target(
            "fwdbwd_vs_torch",
            "dense forward+backward: jaxembed / torch <= 1.0",
            _pairs(records, "fwdbwd", S, T),
            1.0,
        ),
        _target(
            "sgd_vs_torch", "SGD step: jaxembed / torch <= 1.0", _pairs(records, "sgd", S, T), 1.0
        ),
        _target(
            "padding_idx",
            "padding_idx / plain (fwd+bwd) <= 1.1",
            _pairs(records, "opt_fwdbwd", "padding_idx", "plain"),
            1.1,
        ),
        _target(
            "scale_grad_by_freq",
            "scale_grad_by_freq / plain (fwd+bwd) <= 1.5",
            _pairs(records, "opt_fwdbwd", "scale_grad_by_freq", "plain"),
            1.5,
        ),
        _target(
            "max_norm_fwd",
            "max_norm / plain (fwd with in-place renorm, donated) <= 2",
            _pairs(records, "opt_fwd", "max_norm", "plain"),
            2.0,
        ),
        _target(
            "max_norm_fwdbwd",
            "max_norm / plain (fwd+bwd) <= 2",
            _pairs(records, "opt_fwdbwd", "max_norm", "plain"),
            2.0,
        ),
        _target(
            "skew_backward",
            "fwd+bwd with Zipf/padding-heavy ids / uniform ids <= 1.5 "
            "(the GPU scatter-contention target)",
            non_uniform,
            1.5,
        ),
        # Issue 16: EmbeddingBag (float32, CPU; median over shapes and modes) and the model.
        _target(
            "bag_fwd_2d_vs_torch",
            "EmbeddingBag forward, 2-D bags: jaxembed / torch <= 1.0 (median)",
            _bag_pairs(records, "bag_fwd", "2d", T),
            1.0,
            on_median=True,
        ),
        _target(
            "bag_fwd_1d_vs_torch",
            "EmbeddingBag forward, 1-D bags (offsets): jaxembed / torch <= 1.5 (median)",
            _bag_pairs(records, "bag_fwd", "1d", T),
            1.5,
            on_median=True,
        ),
        _target(
            "bag_fwdbwd_vs_torch",
            "EmbeddingBag forward+backward: jaxembed / torch <= 1.0 (median)",
            _pairs(records, "bag_fwdbwd", S, T),
            1.0,
            on_median=True,
        ),
        _target(
            "model_vs_flax_nnx",
            "model training step: jaxembed.Embed / flax.nnx.Embed <= 1.02",
            _pairs(records, MODEL_OP, S, "flax.nnx"),
            1.02,
        ),
        # Reported without a target in the issue:
        _target(
            "adam_vs_torch",
            "(no target) Adam step: jaxembed / torch",
            _pairs(records, "adam", S, T),
            float("inf"),
        ),
        *[
            _target(
                f"{op}_vs_torch_compile",
                f"(no target) {op}: jaxembed / torch.compile",
                _pairs(records, op, S, cases.TORCH_COMPILE),
                float("inf"),
            )
            for op in ("fwd", "fwdbwd", "sgd", "bag_fwd", "bag_fwdbwd", MODEL_OP)
        ],
        _target(
            "model_vs_torch",
            "(no target) model training step: jaxembed / torch",
            _pairs(records, MODEL_OP, S, T),
            float("inf"),
        ),
        *[
            _target(
                f"model_share_{name}",
                f"(no target) model step: share of the embedding "
                f"lookup in {name}'s step (1 - step without lookup / step)",
                _pairs(records, MODEL_OP, name, base + NO_LOOKUP),
                float("inf"),
                value=lambda a, b: 1 - b["median_ms"] / a["median_ms"],
            )
            for name, base in (
                (S, "flax.nnx"),
                ("flax.nnx", "flax.nnx"),
                (T, T),
                (cases.TORCH_COMPILE, cases.TORCH_COMPILE),
            )
        ],
        _target(
            "fwd_nnx_vs_functional",
            "(no target) forward: jaxembed.nnx / functional",
            _pairs(records, "fwd", "jaxembed.nnx", S),
            float("inf"),
        ),
        _target(
            "fwd_linen_vs_functional",
            "(no target) forward: jaxembed.linen / functional",
            _pairs(records, "fwd", "jaxembed.linen", S),
            float("inf"),
        ),
    ]


def targets_text(targets) -> str:
    lines = ["targets (value per shape x dist; 'noise' = larger rel. IQR of the two timings):"]
    for t in targets:
        if t["n"] == 0:
            lines.append(f"  [no data] {t['text']}")
            continue
        status = t["status"].upper() if t["threshold"] != float("inf") else "info"
        if t["threshold"] == float("inf"):  # no threshold: nothing is "met"
            lines.append(
                f"  [info] {t['text']}: median {t['median']:.2f} "
                f"(range {min(r['value'] for r in t['rows']):.2f}-"
                f"{max(r['value'] for r in t['rows']):.2f}, {t['n']} groups)"
            )
            continue
        lines.append(
            f"  [{status}] {t['text']}: met {t['n_met']}/{t['n']} "
            f"(within noise {t['n_within_noise']}/{t['n']}), median {t['median']:.2f}, "
            f"worst {t['worst']:.2f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Markdown and plot
# ---------------------------------------------------------------------------------------------


def markdown(result) -> str:
    records, info = result["records"], result["settings"]
    L = [
        "# jaxembed bench results",
        "",
        f"- device: {info['backend']} {info['device_kind']}; cpu: {info['cpu']}, "
        f"{info['cpu_count']} cores, {info['mem_total_gb']} GB RAM",
        f"- jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}, optax "
        f"{info['optax']}, torch {info['torch']} (threads {info.get('torch_threads')})",
        f"- allocator: jemalloc loaded = {info['jemalloc_loaded']}, MALLOC_CONF = "
        f"`{info['MALLOC_CONF']}`, OMP_WAIT_POLICY = `{info['OMP_WAIT_POLICY']}`, XLA_FLAGS = "
        f"`{info['XLA_FLAGS']}`",
        f"- rounds {result['args']['reps']}, warm-up {result['args']['warmup']}, sample >= "
        f"{result['args']['target_ms']} ms; elapsed {result['elapsed_s']:.0f} s; load average "
        f"at the start {info.get('load_average')}",
        "- bytes models: " + "; ".join(f"{k}: {v}" for k, v in result["bytes_models"].items()),
        "",
        "## Targets",
        "",
        "| target | status | met | within noise | median | worst |",
        "|---|---|---:|---:|---:|---:|",
    ]
    if result.get("partial"):
        stop = result.get("stopped_by")
        L[1:1] = [
            "",
            f"**Partial run** ({'stopped by ' + stop if stop else 'not finished'}): "
            f"the {len(records)} records measured before it stopped; bench.json holds "
            "the same records.",
            "",
        ]
    for t in result["targets"]:
        if t["n"] and t["threshold"] == float("inf"):
            L.append(f"| {t['text']} | info | | | {t['median']:.2f} | |")
        elif t["n"]:
            L.append(
                f"| {t['text']} | {t['status']} | {t['n_met']}/{t['n']} | "
                f"{t['n_within_noise']}/{t['n']} | {t['median']:.2f} | {t['worst']:.2f} |"
            )
        else:
            L.append(f"| {t['text']} | no data | | | | |")
    L += _compile_times(records)
    for op in ALL_OPS:
        recs = [r for r in records if r["op"] == op]
        if not recs:
            continue
        names = list(dict.fromkeys(r["contender"] for r in recs))
        ratio = "÷ plain" if op in OPTION_OPS else "jaxembed ÷"
        L += [
            "",
            f"## {op}",
            "",
            "Median ms (rel. IQR %); then " + ratio + " each; ceiling fraction of jaxembed "
            "(copy time / time for fwd, zero-fill time / time for fwd+bwd, GB/s / copy GB/s for "
            "steps).",
            "",
            "| shape | ids | "
            + " | ".join(names)
            + " | "
            + " | ".join(f"{ratio} {n}" for n in names if n not in ("plain", cases.SUBJECT))
            + " | ceiling |",
            "|---|---|"
            + "---:|"
            * (
                2 * len(names) - (1 if any(n in ("plain", cases.SUBJECT) for n in names) else 0) + 1
            ),
        ]
        for key in dict.fromkeys(_key(r) for r in recs):
            group = {r["contender"]: r for r in recs if _key(r) == key}
            cells = []
            for n in names:
                r = group.get(n)
                cells.append(
                    "-"
                    if r is None
                    else (
                        f"{r['median_ms']:.3f} ({100 * r['rel_iqr']:.0f})"
                        if "median_ms" in r
                        else "FAIL"
                    )
                )
            rat = [
                _f(ratio_column(group[n], group)) if n in group else "-"
                for n in names
                if n not in ("plain", cases.SUBJECT)
            ]
            subj = group.get("plain" if op in OPTION_OPS else cases.SUBJECT)
            ceil = _f(ceiling_column(subj, group, records), pct=True) if subj else "-"
            L.append(
                f"| {key[0]} | {key[1]} | "
                + " | ".join(cells)
                + " | "
                + " | ".join(rat)
                + f" | {ceil} |"
            )
    L += _model_shares(records)
    if result["notes"]:
        L += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(L) + "\n"


def _compile_times(records) -> list[str]:
    """Per operation and contender: the median (max) excess of the first call over a timed
    call, i.e. the compilation (jax.jit tracing + XLA; torch.compile's dynamo + inductor)."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if "compile_s" in r and not r["contender"].startswith(("ceiling", "floor")):
            by.setdefault(r["op"], {}).setdefault(r["contender"], []).append(r["compile_s"])
    if not by:
        return []
    names = list(dict.fromkeys(n for op in by.values() for n in op))
    L = [
        "",
        "## Compile time (first call minus a timed call), s: median (max) over groups",
        "",
        "| op | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for op, per in by.items():
        L.append(
            f"| {op} | "
            + " | ".join(
                f"{statistics.median(per[n]):.2f} ({max(per[n]):.2f})" if n in per else "-"
                for n in names
            )
            + " |"
        )
    return L


def _model_shares(records) -> list[str]:
    """The in-model step: each framework's step with and without the lookup, and the share."""
    recs = {r["contender"]: r for r in records if r["op"] == MODEL_OP and "median_ms" in r}
    if not recs:
        return []
    L = [
        "",
        "## The embedding inside a training step",
        "",
        "| contender | step ms (IQR %) | without lookup ms | lookup's share | jaxembed ÷ |",
        "|---|---:|---:|---:|---:|",
    ]
    subject = recs.get(cases.SUBJECT)
    for name, r in recs.items():
        if name.endswith(NO_LOOKUP):
            continue
        base = recs.get(("flax.nnx" if name == cases.SUBJECT else name) + NO_LOOKUP)
        share = "-" if base is None else f"{100 * (1 - base['median_ms'] / r['median_ms']):.0f}%"
        rel = "-" if subject is None else f"{subject['median_ms'] / r['median_ms']:.3f}"
        without = "-" if base is None else f"{base['median_ms']:.2f}"
        L.append(
            f"| {name} | {r['median_ms']:.2f} ({100 * r['rel_iqr']:.0f}) | {without} | "
            f"{share} | {rel} |"
        )
    return L


def plot(result, target):
    """Effective GB/s per contender for each operation (log scale), as PNG into ``target`` (a
    path or a binary file). Returns ``target``; None without matplotlib or anything to plot."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in result["records"] if "gbps" in r]
    ops = [op for op in ALL_OPS if any(r["op"] == op for r in records)]
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), 1, figsize=(14, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        recs = [r for r in records if r["op"] == op]
        keys = list(dict.fromkeys(_key(r)[:2] for r in recs))
        x = {k: i for i, k in enumerate(keys)}
        for name in dict.fromkeys(r["contender"] for r in recs):
            pts = [(x[_key(r)[:2]], r["gbps"]) for r in recs if r["contender"] == name]
            style = "--" if name.startswith("ceiling") else "-"
            ax.plot(*zip(*pts), style, marker="o", ms=3, lw=1, label=name)
        ax.set_yscale("log")
        ax.set_ylabel("effective GB/s")
        partial = " - PARTIAL run" if result.get("partial") else ""
        ax.set_title(
            f"{op} ({result['settings']['backend']} {result['settings']['device_kind']}){partial}"
        )
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{s} {d}" for s, d in keys], rotation=75, fontsize=6)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(target, dpi=90, format="png")
    plt.close(fig)
    return target
