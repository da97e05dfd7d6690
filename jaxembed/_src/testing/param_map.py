"""The parameter map between a torch module and its JAX port (Flax NNX, or Linen variables).

Every tensor of the torch ``state_dict`` is paired with a leaf of the JAX model's state, with the
layout conversion the port needs:

==========================================  ==========================  ====================
torch module, tensor                        JAX leaf                    layout
==========================================  ==========================  ====================
``nn.Linear.weight`` (out, in)              ``kernel`` (in, out)        transpose
``nn.Linear.bias``                          ``bias``                    identity
``nn.Embedding`` / ``EmbeddingBag.weight``  ``embedding``               identity
``nn.LayerNorm`` / ``RMSNorm`` /            ``scale`` / ``bias``        identity
``GroupNorm`` / ``BatchNorm*`` weight/bias
``BatchNorm*.running_mean`` / ``_var``      ``mean`` / ``var``          identity
``nn.Conv{1,2,3}d.weight`` (O, I, *k)       ``kernel`` (*k, I, O)       conv
any other tensor                            the same name               identity
==========================================  ==========================  ====================

A torch tensor ``a.b.weight`` is paired with the JAX leaf at the same module path (``a.b``) with
the name above. Paths are compared after one normalisation on both sides: ``x_3`` and ``x.3``
are the same (torch's ``ModuleList`` index, NNX's ``nnx.List`` index and Linen's ``setup`` list
names), and the ``layers`` level of an ``nnx.Sequential`` is skipped (torch's ``nn.Sequential``
has none). Linen's automatic names (``Dense_0``, ``Embed_1``) never match a torch name; unmatched
torch modules are then paired by order with unmatched auto-named Linen modules of the same kind,
when the counts and every shape agree, and marked ``by order``.

Everything else is reported, never skipped: torch tensors with no JAX leaf, JAX leaves with no
torch tensor, pairs whose shapes disagree after the layout conversion, and a trainability
mismatch (a tensor trainable in torch but frozen in JAX, the trap of a table loaded frozen).
``overrides`` adds hand entries (or renames whole modules) and marks tensors as deliberately
unmapped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """A conversion of a torch tensor (a value, or its gradient) to the JAX leaf's layout.

    Only re-layouts are meaningful (transposes, reshapes): the same conversion is applied to the
    values, the gradients and the parameters after each optimizer step.
    """

    name: str
    to_jax: Callable[[np.ndarray], np.ndarray] = dataclasses.field(compare=False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.to_jax(x)


IDENTITY = Layout("identity", lambda x: x)
TRANSPOSE = Layout("transpose", lambda x: np.asarray(x).T)
CONV = Layout(
    "conv", lambda x: np.transpose(x, tuple(range(2, np.ndim(x))) + (1, 0))
)  # (out, in, *window) -> (*window, in, out)
LAYOUTS = {layout.name: layout for layout in (IDENTITY, TRANSPOSE, CONV)}


def _layout(spec) -> Layout:
    if isinstance(spec, Layout):
        return spec
    if isinstance(spec, str):
        if spec not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)} or a callable, got {spec!r}")
        return LAYOUTS[spec]
    if callable(spec):
        return Layout(getattr(spec, "__name__", "custom"), spec)
    raise TypeError(f"layout must be a name, a Layout or a callable, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------


_INDEX = re.compile(r"_(\d+)$")


def _canonical(parts) -> str:
    """``('layer', 0, 'fc_1')`` and ``'layer.0.fc.1'`` alike -> ``'layer.0.fc.1'``."""
    out = []
    for p in parts:
        p = str(p)
        out.append(_INDEX.sub(r".\1", p))
    return ".".join(out)


@dataclasses.dataclass(frozen=True)
class _TorchLeaf:
    name: str
    module: str
    leaf: str
    owner: Any
    shape: tuple
    trainable: bool
    is_param: bool
    sparse: bool
    tied_to: str | None


@dataclasses.dataclass(frozen=True)
class _JaxLeaf:
    path: tuple  # NNX state path, or Linen (collection, *path)
    name: str  # dotted path as written by the user (Linen: without the collection)
    module: str  # dotted path of the owning module
    key: str  # canonical dotted path used for matching
    kind: str  # "param", "sparse", "frozen" or "buffer"
    shape: tuple
    dtype: Any
    owner_type: type | None
    auto_kind: str | None = None  # Linen automatic name's class ("Dense"), for by-order pairing
    auto_index: tuple = ()


def _torch_leaves(torch_model) -> list[_TorchLeaf]:
    import torch

    seen: dict[int, str] = {}
    leaves = []
    for name, t in torch_model.state_dict(keep_vars=True).items():
        module, _, leaf = name.rpartition(".")
        owner = torch_model.get_submodule(module) if module else torch_model
        is_param = isinstance(t, torch.nn.Parameter)
        sparse = (
            isinstance(owner, (torch.nn.Embedding, torch.nn.EmbeddingBag))
            and bool(owner.sparse)
            and leaf == "weight"
        )
        tied_to = seen.get(id(t))
        seen.setdefault(id(t), name)
        leaves.append(
            _TorchLeaf(
                name,
                module,
                leaf,
                owner,
                tuple(t.shape),
                is_param and t.requires_grad,
                is_param,
                sparse,
                tied_to,
            )
        )
    return leaves


def _nnx_kind(var) -> str | None:
    from jaxembed._src.nnx import sparse as sparse_nnx
    from jaxembed._src.nnx.embed import FrozenParam

    if isinstance(var, (nnx.RngState, sparse_nnx.RowProbe, sparse_nnx.RowIds)):
        return None  # machinery, not model state
    if isinstance(var, sparse_nnx.SparseParam):
        return "sparse"
    if isinstance(var, FrozenParam):
        return "frozen"
    if isinstance(var, nnx.Param):
        return "param"
    return "buffer"


def _nnx_leaves(model) -> tuple[list[_JaxLeaf], dict[str, tuple[str, type]]]:
    modules = {tuple(p): m for p, m in nnx.iter_modules(model)}
    sequential = {p for p, m in modules.items() if isinstance(m, nnx.Sequential)}

    def canonical(path):
        kept = [
            part
            for i, part in enumerate(path)
            if not (part == "layers" and tuple(path[:i]) in sequential)
        ]
        return _canonical(kept)

    leaves = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        kind = _nnx_kind(var)
        if kind is None:
            continue
        owner = max((p for p in modules if p == tuple(path[: len(p)])), key=len)
        value = var.get_value()
        leaves.append(
            _JaxLeaf(
                tuple(path),
                ".".join(map(str, path)),
                ".".join(map(str, owner)),
                canonical(path),
                kind,
                tuple(np.shape(value)),
                value.dtype,
                type(modules[owner]),
            )
        )
    module_keys = {canonical(p): (".".join(map(str, p)), type(m)) for p, m in modules.items()}
    return leaves, module_keys


_LINEN_KINDS = {"params": "param", "sparse_params": "sparse", "frozen": "frozen"}
_LINEN_SKIP = {"row_probes", "row_ids", "intermediates"}
_AUTO_NAME = re.compile(r"^([A-Z][A-Za-z0-9]*)_(\d+)$")


def _linen_leaves(variables) -> tuple[list[_JaxLeaf], dict[str, tuple[str, None]]]:
    from flax import traverse_util

    leaves, module_keys = [], {"": ("", None)}
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        collection, rest = path[0], path[1:]
        if collection in _LINEN_SKIP:
            continue
        module = rest[:-1]
        auto = _AUTO_NAME.match(module[-1]) if module else None
        for i in range(1, len(module) + 1):
            module_keys[_canonical(module[:i])] = (".".join(module[:i]), None)
        leaves.append(
            _JaxLeaf(
                tuple(path),
                ".".join(rest),
                ".".join(module),
                _canonical(rest),
                _LINEN_KINDS.get(collection, "buffer"),
                tuple(np.shape(value)),
                value.dtype,
                None,
                auto.group(1) if auto else None,
                tuple(
                    int(numbered.group(2)) if (numbered := _AUTO_NAME.match(m)) else -1
                    for m in module
                ),
            )
        )
    return leaves, module_keys


def is_linen(jax_model) -> bool:
    """Linen models are passed as ``(module, variables)``."""
    return isinstance(jax_model, tuple) and len(jax_model) == 2


def _jax_leaves(jax_model):
    if is_linen(jax_model):
        return _linen_leaves(jax_model[1])
    if isinstance(jax_model, nnx.Module):
        return _nnx_leaves(jax_model)
    raise TypeError(
        "jax_model must be a flax.nnx.Module or a (flax.linen.Module, variables) pair, got "
        f"{type(jax_model).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


def _rules(owner, leaf: str) -> list[tuple[str, Layout]]:
    """The JAX leaf names (with layouts) a torch tensor may be stored under, best first."""
    import torch.nn as tnn

    norms: tuple[type, ...] = (tnn.LayerNorm, tnn.GroupNorm, tnn.modules.batchnorm._NormBase)
    if hasattr(tnn, "RMSNorm"):
        norms += (tnn.RMSNorm,)
    if isinstance(owner, tnn.Linear):
        table = {"weight": [("kernel", TRANSPOSE)]}
    elif isinstance(owner, (tnn.Embedding, tnn.EmbeddingBag)):
        table = {"weight": [("embedding", IDENTITY)]}
    elif isinstance(owner, norms):
        table = {
            "weight": [("scale", IDENTITY)],
            "running_mean": [("mean", IDENTITY)],
            "running_var": [("var", IDENTITY)],
        }
    elif isinstance(owner, tnn.modules.conv._ConvNd) and not owner.transposed:
        table = {"weight": [("kernel", CONV)]}
    else:
        table = {}
    return table.get(leaf, []) + [(leaf, IDENTITY)]


def _torch_kind(owner) -> tuple[str, ...] | None:
    """The family of a torch module, for pairing by order with Linen's automatic names."""
    import torch.nn as tnn

    for kinds, cls in (
        (("Dense",), tnn.Linear),
        (("Embed",), tnn.Embedding),
        (("EmbeddingBag",), tnn.EmbeddingBag),
        (("LayerNorm",), tnn.LayerNorm),
        (("BatchNorm",), tnn.modules.batchnorm._BatchNorm),
        (("Conv",), tnn.modules.conv._ConvNd),
    ):
        if isinstance(owner, cls):
            return kinds
    return None


_IGNORED_BY_DEFAULT = {"num_batches_tracked": "BatchNorm's step counter; flax keeps none"}


# ---------------------------------------------------------------------------------------------
# The map
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch tensor and the JAX leaf that holds it.

    ``how``: ``"auto"`` (by path and the layer rules), ``"by order"`` (a Linen automatic name),
    ``"hand"`` (an override) or ``"tied"`` (a torch alias of an already mapped tensor).
    ``trainable``: trained by the comparisons (torch ``requires_grad`` and a JAX ``Param`` or
    sparse table). ``torch_sparse``: torch gives it a sparse gradient (``sparse=True``).
    """

    torch_name: str
    jax_name: str
    jax_path: tuple
    layout: Layout
    torch_shape: tuple
    jax_shape: tuple
    jax_kind: str
    how: str
    trainable: bool
    torch_sparse: bool = False

    def to_jax(self, torch_array: np.ndarray) -> np.ndarray:
        """A torch value or gradient of this tensor in the JAX leaf's layout."""
        return np.asarray(self.layout(np.asarray(torch_array)))


@dataclasses.dataclass
class ParamMap:
    """The pairing of a torch model's tensors with a JAX model's leaves (see the module doc).

    ``entries``: the pairs, in torch ``state_dict`` order. ``unmapped_torch`` and
    ``unmapped_jax``: ``(name, reason)`` for every tensor or leaf without a partner, a shape
    mismatch or a trainability mismatch included. ``ignored``: ``(name, reason)`` for tensors
    left out on purpose (an override of None, BatchNorm's ``num_batches_tracked``, a torch alias
    of a tied tensor with no JAX leaf of its own). ``modules``: torch module name -> JAX module
    path, for the modules whose outputs are compared.
    """

    entries: list[Entry]
    unmapped_torch: list[tuple[str, str]]
    unmapped_jax: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    modules: dict[str, str]
    framework: str

    @property
    def problems(self) -> list[str]:
        return [f"torch {n}: {r}" for n, r in self.unmapped_torch] + [
            f"JAX {n}: {r}" for n, r in self.unmapped_jax
        ]

    def check(self) -> ParamMap:
        """Raises ValueError naming every unmapped or mismatched tensor; returns self."""
        if self.problems:
            raise ValueError(
                f"the parameter map has {len(self.problems)} problem(s):\n  "
                + "\n  ".join(self.problems)
                + "\nPass overrides={torch_name: jax_path (or (jax_path, layout), or None to "
                "leave it out)} to jaxembed.testing.param_map / compare."
            )
        return self

    def entry(self, torch_name: str) -> Entry:
        for e in self.entries:
            if e.torch_name == torch_name:
                return e
        raise KeyError(f"{torch_name!r} is not mapped")

    def table(self) -> str:
        from jaxembed._src.testing.report import format_table

        rows = [
            (
                e.torch_name,
                str(e.torch_shape),
                e.jax_name,
                str(e.jax_shape),
                e.layout.name,
                e.how,
                "" if e.trainable else e.jax_kind,
            )
            for e in self.entries
        ]
        rows += [(n, "", "-", "", "", "UNMAPPED", r) for n, r in self.unmapped_torch]
        rows += [("-", "", n, "", "", "UNMAPPED", r) for n, r in self.unmapped_jax]
        rows += [(n, "", "-", "", "", "ignored", r) for n, r in self.ignored]
        return format_table(("torch", "shape", "JAX", "shape", "layout", "how", "note"), rows)

    def summary(self) -> str:
        hand = [e.torch_name for e in self.entries if e.how == "hand"]
        order = [e.torch_name for e in self.entries if e.how == "by order"]
        parts = [f"{len(self.entries)} tensors mapped ({self.framework})"]
        if hand:
            parts.append(f"{len(hand)} by hand")
        if order:
            parts.append(f"{len(order)} by order")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored")
        if self.problems:
            parts.append(f"{len(self.problems)} PROBLEM(S)")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()


def build_param_map(torch_model, jax_model, overrides: Mapping[str, Any] | None = None) -> ParamMap:
    """Builds the :class:`ParamMap` between ``torch_model`` and ``jax_model``.

    Args:
      torch_model: a ``torch.nn.Module``.
      jax_model: a ``flax.nnx.Module``, or a ``(flax.linen.Module, variables)`` pair.
      overrides: hand entries, keyed by torch name:

        * ``"a.b.weight": "x.y.kernel"``: the tensor is held by that JAX leaf (its dotted path;
          Linen paths with or without the collection); the layout follows the rules of the
          table above for that leaf name (``kernel`` of a ``Linear``: transpose), else identity.
        * ``"a.b.weight": ("x.y.kernel", layout)``: with an explicit layout, ``"identity"``,
          ``"transpose"``, ``"conv"``, a :class:`Layout` or a callable ``torch_array ->
          jax_array`` (a re-layout: it is applied to values and gradients alike).
        * ``"a.b.weight": None``: leave it out on purpose (listed as ignored).
        * ``"a.b": "x.y"`` where ``a.b`` is a torch *module*: a module rename, applied to every
          tensor below it before the automatic pairing.
        * ``"x.y.cache": None`` where ``x.y.cache`` is a JAX leaf: a JAX leaf with no torch
          counterpart, left out on purpose.

    Unmapped tensors are reported in the map (``.problems``, ``.check()``), never dropped.
    """
    overrides = dict(overrides or {})
    t_leaves = _torch_leaves(torch_model)
    j_leaves, j_module_keys = _jax_leaves(jax_model)
    torch_names = {t.name for t in t_leaves}
    torch_modules = dict(torch_model.named_modules())
    jax_names = {j.name for j in j_leaves} | {".".join(map(str, j.path)) for j in j_leaves}
    ignored_jax = {
        k for k, v in overrides.items() if v is None and k not in torch_names and k in jax_names
    }
    renames = {k: v for k, v in overrides.items() if k not in torch_names and k not in ignored_jax}
    for k, v in renames.items():
        if k not in torch_modules:
            raise KeyError(
                _unknown_name(k, "torch tensor or module", torch_names | set(torch_modules))
            )
        if not isinstance(v, str):
            raise TypeError(
                f"overrides[{k!r}] renames a module and must be a JAX module path "
                f"(a str), got {v!r}"
            )

    def renamed(module: str) -> str:
        for old in sorted(renames, key=len, reverse=True):
            if module == old or module.startswith(old + ".") or old == "":
                rest = module[len(old) :].lstrip(".")
                return ".".join(p for p in (renames[old], rest) if p)
        return module

    by_key: dict[str, _JaxLeaf] = {}
    by_name: dict[str, _JaxLeaf] = {}
    for j in j_leaves:
        by_key.setdefault(j.key, j)
        by_name[j.name] = j
        by_name[".".join(map(str, j.path))] = j  # Linen: with the collection
    taken: set[tuple] = set()
    entries: dict[str, Entry] = {}
    unmapped_torch: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    pending: list[_TorchLeaf] = []

    def add(t: _TorchLeaf, j: _JaxLeaf, layout: Layout, how: str) -> None:
        """Pairs ``t`` with ``j``, or reports why they cannot pair (``j`` is claimed either
        way, so that a mismatch is reported once, on the torch tensor's line)."""
        taken.add(j.path)
        shape = tuple(np.shape(layout(np.zeros(t.shape, np.float32))))
        if shape != j.shape:
            via = "" if layout is IDENTITY else f" is {shape} after {layout.name}"
            unmapped_torch.append((t.name, f"shape {t.shape}{via}, JAX {j.name} has {j.shape}"))
        elif t.trainable and j.kind not in ("param", "sparse"):
            unmapped_torch.append(
                (t.name, f"trainable in torch, {j.kind} (not trained) in JAX {j.name}")
            )
        elif t.is_param and not t.trainable and j.kind in ("param", "sparse"):
            unmapped_torch.append(
                (t.name, f"frozen in torch (requires_grad=False), trainable in JAX {j.name}")
            )
        else:
            entries[t.name] = Entry(
                t.name,
                j.name,
                j.path,
                layout,
                t.shape,
                j.shape,
                j.kind,
                how,
                t.trainable and j.kind in ("param", "sparse"),
                t.sparse,
            )

    for t in t_leaves:
        if t.name in overrides:
            spec = overrides[t.name]
            if spec is None:
                ignored.append((t.name, "left out by hand (overrides[...] = None)"))
                continue
            target, layout = (spec, None) if isinstance(spec, str) else spec
            j = by_name.get(target) or by_key.get(_canonical(target.split(".")))
            if j is None:
                raise KeyError(_unknown_name(target, "JAX leaf", set(by_name)))
            if layout is None:
                rules = dict(_rules(t.owner, t.leaf)[:-1])
                layout = rules.get(j.name.rpartition(".")[2], IDENTITY)
            add(t, j, _layout(layout), "hand")
            continue
        if t.leaf in _IGNORED_BY_DEFAULT and not t.is_param:
            ignored.append((t.name, _IGNORED_BY_DEFAULT[t.leaf]))
            continue
        module = renamed(t.module)
        for leaf, layout in _rules(t.owner, t.leaf):
            j = by_key.get(_canonical(f"{module}.{leaf}".split(".") if module else [leaf]))
            if j is not None and j.path not in taken:
                add(t, j, layout, "auto")
                break
        else:
            pending.append(t)

    # Linen's automatic names: pair by order within each layer kind.
    free = [j for j in j_leaves if j.path not in taken]
    by_order = _pair_by_order(pending, free)
    auto_kinds = {j.auto_kind for j in free if j.auto_kind is not None}
    for t in pending:
        if t.name in by_order:
            j, layout = by_order[t.name]
            add(t, j, layout, "by order")
        elif t.tied_to is not None and t.tied_to in entries:
            ignored.append((t.name, f"tied to {t.tied_to} (the same torch tensor)"))
        else:
            why = "no JAX leaf at this path"
            if t.module != renamed(t.module):
                why += f" (renamed to {renamed(t.module)})"
            if set(_torch_kind(t.owner) or ()) & auto_kinds:
                why += (
                    "; Linen automatic names of its kind could not be paired by order "
                    "(their counts or shapes differ): name the modules or pass overrides"
                )
            unmapped_torch.append((t.name, why))

    for j in j_leaves:
        if j.name in ignored_jax or ".".join(map(str, j.path)) in ignored_jax:
            ignored.append((j.name, "JAX leaf left out by hand (overrides[...] = None)"))
            taken.add(j.path)
    unmapped_jax = [(j.name, "no torch tensor maps here") for j in j_leaves if j.path not in taken]
    ordered = [entries[t.name] for t in t_leaves if t.name in entries]
    modules = _module_pairs(ordered, torch_modules, j_module_keys, renamed)
    return ParamMap(
        ordered,
        unmapped_torch,
        unmapped_jax,
        ignored,
        modules,
        "linen" if is_linen(jax_model) else "nnx",
    )


def _pair_by_order(pending: list[_TorchLeaf], free: list[_JaxLeaf]) -> dict:
    """torch tensors -> (JAX leaf, layout) for modules paired by order with Linen automatic
    names (``Dense_0``, ``Dense_1``...) of the same kind, when counts and shapes all agree."""
    torch_modules: dict[str, list[_TorchLeaf]] = {}  # registration order
    kind_of: dict[str, tuple] = {}
    for t in pending:
        kinds = _torch_kind(t.owner)
        if kinds is not None:
            torch_modules.setdefault(t.module, []).append(t)
            kind_of[t.module] = kinds
    jax_modules: dict[str, list[_JaxLeaf]] = {}
    for j in free:
        if j.auto_kind is not None:
            jax_modules.setdefault(j.module, []).append(j)
    pairs = {}
    for kinds in set(kind_of.values()):
        t_mods = [m for m in torch_modules if kind_of[m] == kinds]
        j_mods = sorted(
            (m for m, leaves in jax_modules.items() if leaves[0].auto_kind in kinds),
            key=lambda m: jax_modules[m][0].auto_index,
        )  # Linen's call order
        if len(t_mods) != len(j_mods):
            continue
        found = {}
        for tm, jm in zip(t_mods, j_mods):
            j_by_leaf = {j.name.rpartition(".")[2]: j for j in jax_modules[jm]}
            for t in torch_modules[tm]:
                fits = [
                    (j_by_leaf[leaf], layout)
                    for leaf, layout in _rules(t.owner, t.leaf)
                    if leaf in j_by_leaf
                    and np.shape(layout(np.zeros(t.shape))) == j_by_leaf[leaf].shape
                ]
                if not fits:
                    break
                found[t.name] = fits[0]
            else:
                continue
            found = {}
            break
        pairs.update(found)
    return pairs


def _module_pairs(entries, torch_modules, j_module_keys, renamed) -> dict[str, str]:
    """torch module name -> JAX module path: the JAX module at the same (renamed) path, else the
    owner of the module's mapped tensors (by order, by hand) when they all have one owner."""
    pairs: dict[str, str] = {}
    for name in torch_modules:
        hit = j_module_keys.get(_canonical(renamed(name).split("."))) if name else None
        if hit is not None:
            pairs[name] = hit[0]
    owners: dict[str, set] = {}
    for e in entries:
        owners.setdefault(e.torch_name.rpartition(".")[0], set()).add(e.jax_name.rpartition(".")[0])
    for name, found in owners.items():
        if name and name not in pairs and len(found) == 1:
            pairs[name] = found.pop()
    return pairs


def _unknown_name(name: str, what: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(map(str, known)), n=3, cutoff=0.5)
    return f"{name!r} is not a {what}" + (f"; closest: {', '.join(close)}" if close else "")


# ---------------------------------------------------------------------------------------------
# Copying torch's weights
# ---------------------------------------------------------------------------------------------


def torch_values(torch_model, pmap: ParamMap) -> dict[str, np.ndarray]:
    """The torch tensors of the map's entries, in the JAX layouts (numpy, torch's dtypes)."""
    from jaxembed._src.interop import torch_to_numpy

    state = torch_model.state_dict()
    return {e.torch_name: e.to_jax(torch_to_numpy(state[e.torch_name])) for e in pmap.entries}


def copy_weights(
    torch_model,
    jax_model,
    param_map: ParamMap | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
):
    """Copies every mapped torch tensor into the JAX model, in its layout and dtype.

    NNX: the module is updated in place (and returned). Linen (``(module, variables)``): returns
    new variables. Raises ValueError, naming them, when tensors are unmapped or mismatched (see
    :meth:`ParamMap.check`); pass ``overrides`` (or a ``param_map``) to fix that.
    """
    import jax.numpy as jnp

    pmap = (param_map or build_param_map(torch_model, jax_model, overrides)).check()
    values = torch_values(torch_model, pmap)
    if is_linen(jax_model):
        from flax import traverse_util

        flat = traverse_util.flatten_dict(dict(jax_model[1]))
        for e in pmap.entries:
            flat[e.jax_path] = jnp.asarray(values[e.torch_name], flat[e.jax_path].dtype)
        return traverse_util.unflatten_dict(flat)
    variables = dict(nnx.to_flat_state(nnx.state(jax_model)))
    for e in pmap.entries:
        var = variables[e.jax_path]
        var.set_value(jnp.asarray(values[e.torch_name], var.get_value().dtype))
    return jax_model


param_map = build_param_map  # the public name (``param_map`` is also an argument name)
