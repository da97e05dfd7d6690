"""Timing with interleaved rounds, and the settings that distort CPU timings.

On small shared VMs, machine drift (other processes, frequency, page cache) moves every timing by
tens of per cent within seconds. Interleaving (every contender once per round, ``reps`` rounds)
makes that drift hit all contenders alike, so the *ratios* stay meaningful even when absolute
times move. Each sample is the mean over an inner loop calibrated to at least ``target_s``.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable


def _sample(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def run_interleaved(
    benches: dict[str, Callable[[], object]],
    reps: int,
    warmup: int = 2,
    target_s: float = 0.02,
    max_inner: int = 200,
) -> dict[str, dict]:
    """Times each ``fn`` (which must block until its work is done) in interleaved rounds.

    Every round runs every bench once, in a new random order (seeded) each round.

    Returns, per name: median/p25/p75/min/max seconds per call over ``reps`` samples, the relative
    inter-quartile range ``rel_iqr`` (the spread) and the inner-loop count.
    """
    if not benches:
        return {}
    inner = {}
    for name, fn in benches.items():
        t = 0.0
        for _ in range(max(1, warmup)):
            t = _sample(fn, 1)
        inner[name] = max(1, min(max_inner, int(target_s / max(t, 1e-7))))
    times: dict[str, list[float]] = {k: [] for k in benches}
    names = list(benches)
    rng = random.Random(0)
    for _ in range(reps):
        # A fresh random order each round: the op that runs right after another framework's
        # work (torch's OpenMP pool, a numpy copy) pays for it (thread-pool wake-up, caches), so
        # no contender may always sit in the same place or behind the same neighbour.
        rng.shuffle(names)
        for name in names:
            times[name].append(_sample(benches[name], inner[name]))
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        if len(ts) >= 4:
            q1, _, q3 = statistics.quantiles(ts, n=4)
        else:
            q1, q3 = min(ts), max(ts)
        out[name] = dict(
            median=med,
            p25=q1,
            p75=q3,
            min=min(ts),
            max=max(ts),
            reps=len(ts),
            inner=inner[name],
            rel_iqr=(q3 - q1) / med if med > 0 else 0.0,
        )
    return out


# jemalloc with retained pages: freed buffers are reused without fresh page faults, as a GPU
# caching allocator does. glibc malloc returns large buffers to the OS, so every dense gradient
# pays first-touch faults (2-9x on a 2-core VM; see docs/guides/benchmarks.md).
RECOMMENDED_ENV = {
    "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def _loaded_libraries() -> str:
    try:
        with open("/proc/self/maps") as fh:
            return fh.read()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def last_level_cache_bytes() -> int:
    """Size of the CPU's L3 (or 32 MiB when unknown), used for the "out of cache" criterion."""
    for idx in (3, 2):
        s = _read(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size")
        if s:
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
            return int(s.rstrip("KMG")) * mult
    return 32 << 20


def settings() -> dict:
    """What the timings depend on: versions, device, threads, allocator and OpenMP policy."""
    import jax

    maps = _loaded_libraries()
    meminfo = _read("/proc/meminfo") or ""
    mem_total = next(
        (ln.split()[1] for ln in meminfo.splitlines() if ln.startswith("MemTotal")), None
    )
    info = dict(
        python=sys.version.split()[0],
        jax=jax.__version__,
        jaxlib=getattr(__import__("jaxlib"), "__version__", None),
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        device_kind=jax.devices()[0].device_kind,
        cpu=_cpu_model(),
        cpu_count=os.cpu_count(),
        mem_total_gb=round(int(mem_total) / 2**20, 1) if mem_total else None,
        llc_bytes=last_level_cache_bytes(),
        jemalloc_loaded="libjemalloc" in maps,
        tcmalloc_loaded="libtcmalloc" in maps,
        LD_PRELOAD=os.environ.get("LD_PRELOAD"),
        MALLOC_CONF=os.environ.get("MALLOC_CONF"),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"),
        XLA_FLAGS=os.environ.get("XLA_FLAGS"),
        load_average=_read("/proc/loadavg"),
    )
    for mod in ("flax", "optax", "numpy", "torch"):
        m = sys.modules.get(mod)
        info[mod] = getattr(m, "__version__", None) if m else None
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.cuda.is_available()
    retained = "dirty_decay_ms:-1" in (info["MALLOC_CONF"] or "")
    info["recommended_settings_active"] = bool(
        info["jemalloc_loaded"] and retained and info["OMP_WAIT_POLICY"] == "PASSIVE"
    )
    return info


def settings_lines(info: dict) -> list[str]:
    """Human-readable settings, with a hint when the recommended CPU settings are not active."""
    lines = [
        f"device: {info['backend']} {info['device_kind']} ({len(info['devices'])} device(s)); "
        f"cpu: {info['cpu']}, {info['cpu_count']} cores, {info['mem_total_gb']} GB RAM, "
        f"LLC {info['llc_bytes'] >> 20} MiB",
        f"jax {info['jax']} jaxlib {info['jaxlib']} flax {info['flax']} optax {info['optax']} "
        f"numpy {info['numpy']} torch {info['torch']} (threads {info.get('torch_threads')})",
        f"allocator: jemalloc {'LOADED' if info['jemalloc_loaded'] else 'not loaded'}, "
        f"MALLOC_CONF={info['MALLOC_CONF']}; OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}; "
        f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}; XLA_FLAGS={info['XLA_FLAGS']}; "
        f"loadavg {info['load_average']}",
    ]
    if info["backend"] == "cpu" and not info["recommended_settings_active"]:
        env = " ".join(f"{k}={v}" for k, v in RECOMMENDED_ENV.items())
        lines.append(
            "WARNING: recommended CPU settings not active (glibc malloc / OpenMP "
            f"spin-wait distort CPU timings 2-9x). Run with: {env}"
        )
    return lines
