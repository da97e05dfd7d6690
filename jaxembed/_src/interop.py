"""Moving embedding tables between torch, checkpoints on disk and jaxembed, bit for bit.

Sources a table can come from:

* a ``torch.nn.Embedding`` (or ``nn.EmbeddingBag``), or any torch module together with the
  state-dict ``key`` of its table (``"embeddings.word_embeddings.weight"``);
* a ``torch.Tensor`` (a state_dict entry), a numpy or JAX array;
* a mapping such as a state_dict (with ``key``);
* a path: a Hugging Face model directory (``model.safetensors``, a sharded
  ``model.safetensors.index.json`` or a torch ``pytorch_model.bin``, beside ``config.json``), a
  ``.safetensors`` file, or a torch checkpoint (``.bin``/``.pt``/``.pth``/``.ckpt``, read with
  ``torch.load(weights_only=True)``), with ``key``.

Every conversion copies the bits: bfloat16 travels as its 16-bit pattern, never through float32.

The options are the same by every route (docs/guides/pretrained.md has the table):

* ``freeze``: ``None`` (default) keeps the source's own: frozen only when the source says so (a
  torch module whose weight has ``requires_grad=False``, or an integer table, which torch cannot
  train either); otherwise trainable. ``True``/``False`` decide. (``Embed.from_pretrained`` keeps
  torch's own default, ``freeze=True``: it is torch's API.)
* ``padding_idx``: a torch module's own; for a model directory the word table's (the key ending in
  ``word_embeddings.weight``) is ``config.json``'s ``pad_token_id``, as transformers builds it;
  otherwise None.
* ``max_norm``, ``norm_type``, ``scale_grad_by_freq``, ``sparse``: a torch module's own, else the
  module defaults.
* ``dtype``: the output dtype (the looked-up rows are cast), as in the modules.
* ``param_dtype``: the table's dtype: the stored table is converted to it (an explicit request;
  an integer target refuses values that do not fit). None keeps the stored dtype. A 64-bit table
  with ``jax_enable_x64`` off is refused (JAX would narrow it), never truncated.
* the rest of the module's ``from_pretrained`` keywords (``embedding_metadata`` in NNX,
  ``partitioning`` in Linen) pass through.

torch and safetensors are optional: they are imported only inside the functions that need them.
The modules are built with their own ``from_pretrained`` (so the padding row is kept as given, as
torch's ``from_pretrained`` does); no module rule is restated here.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxembed._src.core import validation
from jaxembed._src.core.arrays import is_torch as _is_torch
from jaxembed._src.core.arrays import torch_to_numpy  # noqa: F401 (re-exported: tools use it)
from jaxembed._src.linen import embed as linen_embed
from jaxembed._src.linen import embedding_bag as linen_bag
from jaxembed._src.nnx.embed import Embed, FrozenParam
from jaxembed._src.nnx.embedding_bag import EmbeddingBag

# The options torch's nn.Embedding and jaxembed's modules share (torch's names).
OPTION_NAMES = ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "freeze")
#: The tables ``load_embeddings`` returns from a checkpoint (fnmatch pattern on the key).
TABLE_PATTERN = "*embeddings.weight"
#: The key whose table takes ``config.json``'s ``pad_token_id`` (Hugging Face's BERT family).
WORD_TABLE_SUFFIX = "word_embeddings.weight"
#: The weights files of a model directory, in order of preference.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_EXPECTED = "a model directory, a .safetensors file or a torch checkpoint (.bin/.pt/.pth)"
# safetensors' dtype names (its format spec), for the header of a file being patched.
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def numpy_to_torch(array, device=None):
    """A numpy/JAX array as a torch tensor with the same bits (bfloat16 included)."""
    import torch

    a = np.ascontiguousarray(np.asarray(array))
    if a.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a.copy())
    return t if device is None else t.to(device)


# ---------------------------------------------------------------------------------------------
# Checkpoints on disk
# ---------------------------------------------------------------------------------------------


def _missing_key(key: str, keys, where: str) -> KeyError:
    """A short KeyError: the closest key names, never the whole list."""
    keys = list(keys)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if close:
        hint = "closest: " + ", ".join(map(repr, close))
    else:
        tables = fnmatch.filter(keys, TABLE_PATTERN)[:3]
        hint = "its embedding tables: " + (", ".join(map(repr, tables)) or "none")
    return KeyError(f"{where}: no tensor {key!r} among its {len(keys)}; {hint}")


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (a pickle before torch 1.6)."""
    if path.suffix in TORCH_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _load_torch_file(path: Path):
    """``torch.load(weights_only=True)`` on CPU: the outer object and its dict of tensors."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a torch checkpoint; reading it needs torch") from None
    try:
        outer = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types; the first line says what went wrong
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a readable torch checkpoint ({first}); expected {_EXPECTED}"
        ) from None
    state = outer
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning-style checkpoints nest the state dict
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a torch state dict, got {type(state).__name__}")
    return outer, state


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a ``.safetensors`` file and where its data starts (its format spec:
    an 8-byte little-endian header length, the header, the tensors' bytes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


class Checkpoint:
    """The tensors of a checkpoint on disk, read one at a time (a torch file is loaded whole).

    ``path``: a model directory, a ``.safetensors`` file, a ``model.safetensors.index.json`` or
    a torch checkpoint. Errors name the path and say what was expected.
    """

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory; expected {_EXPECTED}")
        self.path = path
        self.config: dict = {}
        if path.is_dir():
            config = path / "config.json"
            if config.is_file():
                try:
                    self.config = json.loads(config.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise ValueError(f"{config}: not valid JSON ({e})") from None
            weights = next((path / n for n in WEIGHTS_FILES if (path / n).is_file()), None)
            if weights is None:
                raise FileNotFoundError(
                    f"{path}: a model directory holds one of {', '.join(WEIGHTS_FILES)}; found none"
                )
        else:
            weights = path
        self.weights = weights
        self._torch: dict[str, Any] | None = None  # a torch file's loaded entries
        if weights.name.endswith(".safetensors.index.json"):
            self.format = "safetensors"
            try:
                weight_map = json.loads(weights.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                raise ValueError(f"{weights}: not a safetensors index ({e!r})") from None
            self.files = {k: weights.parent / f for k, f in weight_map.items()}
        elif _is_torch_file(weights):
            self.format = "torch"
            self._outer, self._torch = _load_torch_file(weights)
            self.files = {k: weights for k, v in self._torch.items() if _is_torch(v, "Tensor")}
        else:
            self.format = "safetensors"
            with self._open(weights) as f:
                self.files = {k: weights for k in f.keys()}

    def _open(self, file: Path):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(os.fspath(file), framework="numpy")
        except SafetensorError as e:
            raise ValueError(
                f"{file}: not a valid safetensors file ({e}); expected {_EXPECTED}"
            ) from None

    def keys(self) -> list[str]:
        return list(self.files)

    def where(self, key: str | None = None) -> str:
        return os.fspath(self.weights) if key is None else f"{self.weights} [{key}]"

    def check_key(self, key: str) -> None:
        if key not in self.files:
            raise _missing_key(key, self.files, os.fspath(self.weights))

    def get(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a numpy array with unchanged bits."""
        self.check_key(key)
        if self._torch is not None:
            return torch_to_numpy(self._torch[key])
        with self._open(self.files[key]) as f:
            return f.get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        self.check_key(key)
        if self._torch is not None:
            return tuple(self._torch[key].shape)
        with self._open(self.files[key]) as f:
            return tuple(f.get_slice(key).get_shape())

    def source_options(self, key: str) -> dict[str, Any]:
        """The options the directory states for ``key``: the word table's padding row."""
        pad = self.config.get("pad_token_id")
        if key.endswith(WORD_TABLE_SUFFIX) and pad is not None:
            return {"padding_idx": pad}
        return {}


def load_safetensors(path, key: str = "weight") -> np.ndarray:
    """The tensor ``key`` of a ``.safetensors`` file, as a numpy array (only that tensor is
    read)."""
    return Checkpoint(path).get(key)


def save_safetensors(path, table, key: str = "weight") -> None:
    """Writes ``table`` (an array, a jaxembed module or a ``torch.nn.Embedding``) under ``key``."""
    from safetensors.numpy import save_file

    save_file({key: np.ascontiguousarray(table_of(table))}, os.fspath(path))


# ---------------------------------------------------------------------------------------------
# One table and its source's options
# ---------------------------------------------------------------------------------------------


def torch_options(module) -> dict[str, Any]:
    """The options of a ``torch.nn.Embedding`` / ``nn.EmbeddingBag`` under jaxembed's names.

    ``freeze`` is ``not weight.requires_grad``. An ``nn.Embedding``'s ``sparse`` becomes
    jaxembed's ``sparse`` (row-sparse training, docs/guides/sparse.md); jaxembed's
    EmbeddingBag has no sparse layout (its dense gradient equals torch's coalesced sparse one),
    so a bag's ``sparse`` is not carried over.
    """
    options = {
        "padding_idx": module.padding_idx,
        "max_norm": module.max_norm,
        "norm_type": module.norm_type,
        "scale_grad_by_freq": module.scale_grad_by_freq,
        "freeze": not module.weight.requires_grad,
    }
    if _is_torch(module, "EmbeddingBag"):
        options.update(mode=module.mode, include_last_offset=module.include_last_offset)
    else:
        options["sparse"] = module.sparse
    return options


def _entry(source, key: str | None) -> tuple[Any, dict, str]:
    """``(table, the source's options, a name for messages)`` for one table of ``source``."""
    if _is_torch(source, "Embedding") or _is_torch(source, "EmbeddingBag"):
        if key not in (None, "weight"):
            raise KeyError(
                f"a torch.nn.{type(source).__name__} holds one tensor, 'weight'; got key={key!r}"
            )
        return torch_to_numpy(source.weight), torch_options(source), type(source).__name__
    if _is_torch(source, "Module"):
        if key is None:
            raise TypeError(
                f"a torch {type(source).__name__} holds many tensors: pass key= "
                "(a state-dict key, e.g. 'embeddings.word_embeddings.weight')"
            )
        owner, _, leaf = key.rpartition(".")
        try:
            module = source.get_submodule(owner)
        except AttributeError:
            module = None
        if (
            leaf == "weight"
            and module is not None
            and (_is_torch(module, "Embedding") or _is_torch(module, "EmbeddingBag"))
        ):
            return _entry(module, None)[0], torch_options(module), key
        state = source.state_dict()
        if key not in state:
            raise _missing_key(key, state, type(source).__name__)
        return torch_to_numpy(state[key]), {}, key
    if _is_torch(source, "Tensor"):
        return torch_to_numpy(source), {}, "tensor"
    if isinstance(source, (str, os.PathLike)):
        return _entry(Checkpoint(source), key)
    if isinstance(source, Checkpoint):
        key = key or "weight"
        return source.get(key), source.source_options(key), source.where(key)
    if isinstance(source, Mapping):
        key = key or "weight"
        if key not in source:
            raise _missing_key(key, source, "the mapping")
        return _entry(source[key], None)[0], {}, key
    if isinstance(source, (np.ndarray, jax.Array)):
        return np.asarray(source), {}, "array"
    raise TypeError(
        "expected a torch.nn.Embedding, a torch module or tensor, a state_dict (with key), a "
        f"path ({_EXPECTED}), a numpy/JAX array or a jaxembed Embed; got {type(source).__name__}"
    )


def table_of(source, key: str | None = None, variables=None) -> np.ndarray:
    """The embedding table held by ``source``, as a numpy array with unchanged bits.

    ``source``: any source of :func:`to_nnx` (``key`` names the entry of a mapping or a
    checkpoint, default ``"weight"``), ``jaxembed.Embed``, or ``jaxembed.linen.Embed`` together
    with its ``variables``.
    """
    if isinstance(source, (Embed, EmbeddingBag)):
        return np.asarray(source.embedding.get_value())
    if isinstance(source, (linen_embed.Embed, linen_bag.EmbeddingBag)):
        if variables is None:
            raise TypeError("a jaxembed.linen.Embed holds no table: pass its `variables` too")
        return np.asarray(_linen_table(source, variables))
    return np.asarray(_entry(source, key)[0])


def _convert(table: np.ndarray, param_dtype, where: str) -> np.ndarray:
    """The stored table as ``param_dtype`` (an explicit request), never silently wrong."""
    target = np.dtype(param_dtype)
    if target == table.dtype:
        return table
    if target.kind in "iu":
        if table.dtype.kind not in "iub":
            raise ValueError(
                f"{where}: param_dtype={target} would truncate a {table.dtype} table to integers"
            )
        info = np.iinfo(target)
        if table.size and (table.min() < info.min or table.max() > info.max):
            raise ValueError(
                f"{where}: values in [{table.min()}, {table.max()}] do not fit "
                f"param_dtype={target} [{info.min}, {info.max}]"
            )
    return table.astype(target)


def _resolve(source, key, freeze, options) -> tuple[np.ndarray, dict, str]:
    """The table (converted to ``param_dtype``) and the merged options of one source entry."""
    table, merged, where = _entry(source, key)
    table = np.asarray(table)
    merged = dict(merged)
    merged.update({k: v for k, v in options.items() if k != "param_dtype"})
    if freeze is not None:
        merged["freeze"] = freeze
    if table.ndim != 2:  # torch's AssertionError, with the table named
        raise AssertionError(
            f"{where}: Embeddings parameter is expected to be 2-dimensional, "
            f"got shape {table.shape}"
        )
    param_dtype = options.get("param_dtype")
    if param_dtype is not None:
        table = _convert(table, param_dtype, where)
    narrowed = np.dtype(jax.dtypes.canonicalize_dtype(table.dtype))
    validation.check_not_narrowed(
        table,
        f"{where}: the table",
        convert=f"pass param_dtype=jnp.{narrowed}"
        + (" (refused if a value does not fit)" if table.dtype.kind in "iu" else ""),
    )
    if merged.get("freeze") is None:
        # Trainable unless the source says frozen; torch cannot train an integer table either.
        merged["freeze"] = not np.issubdtype(table.dtype, np.inexact)
    return table, merged, where


def _build(module_cls, table, options, where):
    try:
        return module_cls.from_pretrained(table, **options)
    except TypeError as e:
        raise TypeError(f"{where}: {e}") from None


def to_nnx(source, *, key: str | None = None, freeze: bool | None = None, **options):
    """A ``jaxembed.Embed`` (an ``EmbeddingBag`` for a torch ``nn.EmbeddingBag``) holding the
    table of ``source``, with the options described in the module docstring.

    ``options``: ``freeze``, ``padding_idx``, ``max_norm``, ``norm_type``, ``scale_grad_by_freq``,
    ``dtype`` (output), ``param_dtype`` (table), ``sparse``, ``embedding_metadata``; they override
    the source's own.
    """
    table, opts, where = _resolve(source, key, freeze, options)
    cls = EmbeddingBag if "mode" in opts else Embed
    return _build(cls, table, opts, where)


def _linen_variables(module):
    # No ids (0 bags of 1 for an EmbeddingBag): init only creates the table.
    return module.init(jax.random.key(0), jnp.zeros((0, 1), jnp.int32))


def to_linen(source, *, key: str | None = None, freeze: bool | None = None, **options):
    """``(module, variables)``: a ``jaxembed.linen.Embed`` (or ``EmbeddingBag``) and the
    variables holding the table of ``source``, with options as in :func:`to_nnx` (Linen's
    ``partitioning`` instead of ``embedding_metadata``)."""
    table, opts, where = _resolve(source, key, freeze, options)
    cls = linen_bag.EmbeddingBag if "mode" in opts else linen_embed.Embed
    module = _build(cls, table, opts, where)
    return module, _linen_variables(module)


# ---------------------------------------------------------------------------------------------
# Every table of a checkpoint
# ---------------------------------------------------------------------------------------------


def embedding_keys(source, pattern: str = TABLE_PATTERN) -> list[str]:
    """The keys of ``source``'s embedding tables: for a torch module, the state-dict keys of its
    ``nn.Embedding``/``nn.EmbeddingBag`` weights; otherwise the 2-D tensors whose key matches
    ``pattern`` (fnmatch; default ``*embeddings.weight``, Hugging Face's naming)."""
    if _is_torch(source, "Embedding") or _is_torch(source, "EmbeddingBag"):
        return ["weight"]
    if _is_torch(source, "Module"):
        return [
            f"{name}.weight" if name else "weight"
            for name, m in source.named_modules()
            if _is_torch(m, "Embedding") or _is_torch(m, "EmbeddingBag")
        ]
    if isinstance(source, (str, os.PathLike)):
        source = Checkpoint(source)
    if isinstance(source, Checkpoint):
        return [k for k in fnmatch.filter(source.keys(), pattern) if len(source.shape(k)) == 2]
    if isinstance(source, Mapping):
        return [k for k in fnmatch.filter(list(source), pattern) if np.ndim(source[k]) == 2]
    raise TypeError(
        f"expected a torch module, a state dict or a path ({_EXPECTED}); got "
        f"{type(source).__name__}"
    )


def _load_all(source, pattern, freeze, options, convert):
    if "padding_idx" in options:
        raise TypeError(
            "padding_idx differs per table: load_embeddings takes it from the "
            "source; set one table's with to_nnx(source, key=..., padding_idx=...)"
        )
    if isinstance(source, (str, os.PathLike)):
        source = Checkpoint(source)  # opened (and a torch file loaded) once for every table
    keys = embedding_keys(source, pattern)
    if not keys:
        where = source.where() if isinstance(source, Checkpoint) else type(source).__name__
        raise KeyError(
            f"{where}: no embedding table (2-D tensor with a key matching "
            f"{pattern!r}); pass pattern=, or key= to to_nnx"
        )
    return {k: convert(source, key=k, freeze=freeze, **options) for k in keys}


def load_embeddings(
    source, *, freeze: bool | None = None, pattern: str = TABLE_PATTERN, **options
) -> dict[str, Any]:
    """Every embedding table of ``source`` in one call: ``{key: jaxembed.Embed}``.

    ``source``: a model directory, a ``.safetensors`` file, a torch checkpoint or a state dict
    (every 2-D tensor whose key matches ``pattern``), or a torch module (every
    ``nn.Embedding``/``nn.EmbeddingBag``, its options kept; a bag becomes a
    ``jaxembed.EmbeddingBag``). Keys are the checkpoint's (state-dict keys for a module). For a
    model directory the word table carries ``config.json``'s ``pad_token_id``. ``options``
    (``freeze``, ``dtype``, ``param_dtype``, ...) apply to every table, as in :func:`to_nnx`;
    by default every table is trainable unless the source says frozen.
    """
    return _load_all(source, pattern, freeze, options, to_nnx)


def load_linen_embeddings(
    source, *, freeze: bool | None = None, pattern: str = TABLE_PATTERN, **options
) -> dict[str, Any]:
    """:func:`load_embeddings` for Linen: ``{key: (module, variables)}``."""
    return _load_all(source, pattern, freeze, options, to_linen)


# ---------------------------------------------------------------------------------------------
# Back to torch, and into a copy of the original checkpoint
# ---------------------------------------------------------------------------------------------


def _linen_table(module, variables):
    collection = variables.get(module._collection, variables)  # the whole dict or one collection
    return collection["embedding"]


def to_torch(module, variables=None, *, device=None):
    """A ``torch.nn.Embedding`` with the table and options of a jaxembed module.

    ``module``: ``jaxembed.Embed``, or ``jaxembed.linen.Embed`` with its ``variables``. The
    output-dtype cast (``dtype``) has no torch counterpart and is not carried over.
    """
    import torch

    if isinstance(module, Embed):
        table = module.embedding.get_value()
        freeze = isinstance(module.embedding, FrozenParam)
        padding_idx = module.padding_idx
    elif isinstance(module, linen_embed.Embed):
        if variables is None:
            raise TypeError("a jaxembed.linen.Embed holds no table: pass its `variables` too")
        table = _linen_table(module, variables)
        freeze = module.freeze
        padding_idx = module._padding_idx
    else:
        raise TypeError(f"expected a jaxembed Embed module, got {type(module).__name__}")
    return torch.nn.Embedding.from_pretrained(
        numpy_to_torch(table, device),
        freeze=freeze,
        padding_idx=padding_idx,
        max_norm=module.max_norm,
        norm_type=module.norm_type,
        scale_grad_by_freq=module.scale_grad_by_freq,
        sparse=module.sparse,
    )


def _new_table(value, key: str) -> np.ndarray:
    if isinstance(value, tuple) and len(value) == 2:  # (linen module, variables)
        return table_of(*value)
    try:
        return table_of(value)
    except TypeError:
        raise TypeError(
            f"tables[{key!r}]: expected a jaxembed module, (linen module, "
            f"variables) or an array; got {type(value).__name__}"
        ) from None


def _check_fits(new: np.ndarray, dtype, shape, key: str, where: str) -> None:
    if new.dtype != np.dtype(dtype) or tuple(new.shape) != tuple(shape):
        raise ValueError(
            f"{where} [{key}]: the checkpoint stores {np.dtype(dtype)} {tuple(shape)}, the new "
            f"table is {new.dtype} {tuple(new.shape)}; cast it (e.g. "
            f"np.asarray(table).astype(np.{np.dtype(dtype)})) so nothing is converted silently"
        )


def save_checkpoint(original, destination, tables: Mapping[str, Any]) -> Path:
    """Writes a copy of the checkpoint ``original`` to ``destination`` with ``tables`` (key ->
    ``jaxembed.Embed``, ``(linen module, variables)`` or array) in place of the stored tensors.

    ``original``: a model directory (copied whole: config, tokenizer, ...), a ``.safetensors``
    file or a torch checkpoint; ``destination`` must not exist. The format stays the same; each
    new table must have the stored dtype and shape (no silent conversion). In a safetensors file
    only the tables' bytes change, every other byte is the original's; a torch checkpoint is
    re-saved with ``torch.save`` with the other tensors' bytes unchanged and the new values
    written into the stored tensors (so tied weights that share storage stay tied).
    """
    ckpt = Checkpoint(original)
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination}: exists; save_checkpoint writes a new copy")
    if ckpt.weights.name.endswith(".index.json") and not ckpt.path.is_dir():
        raise ValueError(
            f"{ckpt.path}: a sharded checkpoint is copied as a whole: pass its model directory"
        )
    new = {}
    for key, value in tables.items():
        ckpt.check_key(key)
        new[key] = np.ascontiguousarray(_new_table(value, key))
    if ckpt.path.is_dir():
        shutil.copytree(ckpt.path, destination)
        target = destination / ckpt.weights.relative_to(ckpt.path)
    else:
        shutil.copyfile(ckpt.path, destination)
        target = destination
    if ckpt._torch is not None:  # a torch file
        for key, table in new.items():
            stored = ckpt._torch[key]
            _check_fits(
                table, torch_to_numpy(stored.reshape(-1)[:0]).dtype, stored.shape, key, ckpt.where()
            )
            stored.copy_(numpy_to_torch(table))
        import torch

        torch.save(ckpt._outer, os.fspath(target))
        return destination
    for key, table in new.items():
        file = target.parent / ckpt.files[key].name
        header, start = _safetensors_header(file)
        entry = header[key]
        _check_fits(table, _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"], key, ckpt.where())
        begin, end = entry["data_offsets"]
        with open(file, "r+b") as f:  # the tensor's bytes in place; nothing else moves
            f.seek(start + begin)
            f.write(table.astype(table.dtype.newbyteorder("<"), copy=False).tobytes())
            assert f.tell() == start + end
    return destination
