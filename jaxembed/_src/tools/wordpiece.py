"""BERT's WordPiece tokenizer, enough to turn words into rows of a pretrained embedding table.

Matches Hugging Face's ``BertTokenizer`` / ``tokenizers``' ``BertNormalizer`` +
``BertPreTokenizer`` + ``WordPiece`` model (the reference the tests compare against):

1. clean: drop NUL, U+FFFD and control characters; every whitespace character becomes a space;
2. put spaces around CJK ideographs, so each Chinese character is a word of its own;
3. lowercase (uncased models) and strip accents (NFD, drop combining marks; by default exactly
   when lowercasing, as BERT);
4. split on whitespace and on punctuation (ASCII symbols and Unicode category P*);
5. each word: greedy longest-match-first against the vocabulary, pieces after the first carry
   the ``##`` prefix; a word with an unmatched remainder, or longer than
   ``max_input_chars_per_word``, becomes the single unknown token.

No special tokens ([CLS], [SEP]) are added and the text is not truncated.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

# BERT's "CJK Unified Ideographs" blocks (tokenization_bert._is_chinese_char). Hiragana, katakana
# and Hangul are deliberately not in it (BERT's choice).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    # All non-alphanumeric ASCII counts ("$", "^", "`"), though Unicode files some as symbols.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


class WordPiece:
    """A WordPiece tokenizer over a ``token -> id`` vocabulary.

    Args:
      vocab: token -> row of the embedding table.
      unk_token: the token of a word the vocabulary cannot spell.
      continuing_subword_prefix: marks pieces after the first ("##").
      max_input_chars_per_word: longer words become ``unk_token``.
      lowercase: lowercase the text (uncased models).
      strip_accents: drop combining marks; None follows ``lowercase`` (BERT's default).
      split_cjk: make each CJK ideograph a word of its own.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        unk_token: str = "[UNK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        split_cjk: bool = True,
    ):
        if unk_token not in vocab:
            raise ValueError(f"unk_token {unk_token!r} is not in the vocabulary")
        self.vocab = vocab
        self.unk_token = unk_token
        self.prefix = continuing_subword_prefix
        self.max_input_chars_per_word = max_input_chars_per_word
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.split_cjk = split_cjk

    # -- construction from the usual files --------------------------------------------------

    @classmethod
    def from_vocab_txt(cls, path, **kwargs) -> "WordPiece":
        """``vocab.txt``: one token per line, the line number is its id.

        Options not given are read from a ``tokenizer_config.json`` next to it when present
        (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``, ``unk_token``);
        otherwise BERT's defaults apply (lowercase, strip accents, split CJK).
        """
        path = Path(path)
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the file's final newline, not an empty token
        vocab = {token.rstrip("\r"): i for i, token in enumerate(lines)}
        config_path = path.with_name("tokenizer_config.json")
        if config_path.exists():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            defaults = {
                "lowercase": config.get("do_lower_case"),
                "strip_accents": config.get("strip_accents"),
                "split_cjk": config.get("tokenize_chinese_chars"),
                "unk_token": config.get("unk_token"),
            }
            for key, value in defaults.items():
                if value is not None and not isinstance(value, dict):
                    kwargs.setdefault(key, value)
        return cls(vocab, **kwargs)

    @classmethod
    def from_tokenizer_json(cls, path) -> "WordPiece":
        """A Hugging Face ``tokenizer.json`` whose model is WordPiece (BERT's normalizer)."""
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(
                f"{path}: tokenizer model {model.get('type')!r} is not supported "
                "(only WordPiece, as in BERT-style models)"
            )
        normalizer = spec.get("normalizer") or {}
        if normalizer and normalizer.get("type") != "BertNormalizer":
            raise ValueError(
                f"{path}: normalizer {normalizer.get('type')!r} is not supported "
                "(only BertNormalizer)"
            )
        return cls(
            dict(model["vocab"]),
            unk_token=model.get("unk_token", "[UNK]"),
            continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
            max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
            lowercase=normalizer.get("lowercase", False),
            strip_accents=normalizer.get("strip_accents"),
            split_cjk=normalizer.get("handle_chinese_chars", False),
        )

    # -- tokenization ---------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """Steps 1-3: clean, space out CJK, lowercase and strip accents."""
        out = []
        for char in text:
            if char in ("\x00", "\ufffd") or _is_control(char):
                continue
            if _is_whitespace(char):
                out.append(" ")
            elif self.split_cjk and is_cjk(char):
                out.append(f" {char} ")
            else:
                out.append(char)
        text = "".join(out)
        if self.lowercase:
            text = text.lower()
        if self.strip_accents:
            text = "".join(
                c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
            )
        return text

    def pre_tokenize(self, text: str) -> list[str]:
        """Steps 1-4: the words WordPiece sees."""
        words = []
        for chunk in self.normalize(text).split():
            current = ""
            for char in chunk:
                if _is_punctuation(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def split_word(self, word: str) -> list[str]:
        """Step 5 for one pre-tokenized word: its pieces, or ``[unk_token]``."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in self.pre_tokenize(text) for piece in self.split_word(word)]

    def encode(self, text: str) -> list[int]:
        """The vocabulary ids of :meth:`tokenize` (no special tokens)."""
        return [self.vocab[piece] for piece in self.tokenize(text)]
