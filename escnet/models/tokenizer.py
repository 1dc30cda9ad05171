"""OpenAI CLIP's byte-level BPE tokenizer (same ids as ``clip.tokenize`` / open_clip's tokenizer).

The merge list is ``escnet/assets/bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence; see assets/NOTICE.md).
Vocabulary layout (49408 ids): 256 byte symbols, the same 256 with the end-of-word mark ``</w>``, one id per
merge in rank order, then <|startoftext|> (49406) and <|endoftext|> (49407).

Cost is bounded whatever the text (a class name is user input): only the first ``MAX_TEXT_CHARS``
characters are cleaned, a pre-token (letter run, symbol run) longer than ``MAX_PIECE_BYTES`` bytes is
BPE-encoded in pieces of that length (BPE is quadratic in a word's length; CLIP's longest symbol is 32
bytes and no real word comes close), and encoding stops once the context is full. Texts that fit in the
context are encoded exactly as OpenAI's tokenizer does.
"""
from __future__ import annotations

import gzip
import html
import importlib.resources
import os
from functools import lru_cache

import ftfy
import regex
import torch

__all__ = ["Tokenizer", "tokenize", "bytes_to_unicode", "SOT", "EOT"]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# OpenAI trains with 49152 symbols: 256 byte symbols, the first (49152 - 256 - 2) merges and two specials
_NUM_MERGES = 49152 - 256 - 2
MAX_TEXT_CHARS = 16384  # of a text, cleaned and tokenized; 77 tokens never need more (even with spaces between)
MAX_PIECE_BYTES = 64  # longer pre-tokens are split before BPE (2 x CLIP's longest symbol)
# contractions, letter runs, single digits, and runs of other non-space symbols; specials kept whole
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character (GPT-2 / CLIP scheme).

    Printable Latin-1 bytes map to themselves; the rest (controls, space, ...) to chr(256 + k) in byte order,
    so the BPE never sees whitespace or control characters.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    # insertion order matters: the vocabulary lists the kept bytes first, then the remapped ones
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(rest)}}


def _clean(text: str) -> str:
    """ftfy repair, double HTML unescape, whitespace runs collapsed to one space, lower-case (OpenAI's cleaning)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """Text -> CLIP token ids. ``Tokenizer()(texts)`` gives a (T, 77) LongTensor padded with 0."""

    def __init__(self, bpe_path: str | os.PathLike | None = None, cache_size: int = 100_000):
        if bpe_path is None:
            data = importlib.resources.files("escnet").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
        else:
            with open(bpe_path, "rb") as f:
                data = f.read()
        # the first line is a version header, not a merge
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
        self.merges = [tuple(line.split()) for line in lines]
        if len(self.merges) != _NUM_MERGES or any(len(m) != 2 for m in self.merges):
            raise ValueError(f"{bpe_path or 'bundled BPE file'}: expected {_NUM_MERGES} merge lines of two symbols")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in self.merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        # class names repeat a small set of words, so the per-word BPE is memoised (per instance, bounded)
        self._bpe = lru_cache(maxsize=cache_size)(self._bpe_word)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def _bpe_word(self, word: str) -> tuple[str, ...]:
        """One pre-token (byte-mapped characters) -> its BPE symbols, the last one carrying ``</w>``."""
        if word in (SOT, EOT):
            return (word,)
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.ranks.get(pair, _NUM_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, (first, second) = min(ranked)
            if rank == _NUM_MERGES:
                break
            # merge every non-overlapping occurrence of the best pair, scanning left to right
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """One text -> its token ids, without start / end tokens; at most `max_tokens` of them (None: all).

        Bounded cost: see the module docstring (MAX_TEXT_CHARS, MAX_PIECE_BYTES)."""
        ids: list[int] = []
        for match in _PATTERN.finditer(_clean(text[:MAX_TEXT_CHARS])):
            raw = match.group().encode("utf-8")
            mapped = "".join(self.byte_encoder[b] for b in raw)
            for start in range(0, len(mapped), MAX_PIECE_BYTES):
                ids.extend(self.encoder[symbol] for symbol in self._bpe(mapped[start:start + MAX_PIECE_BYTES]))
                if max_tokens is not None and len(ids) >= max_tokens:
                    return ids[:max_tokens]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text (word ends become spaces). Reading stops at the end token, so padding is ignored."""
        raw = bytearray()
        for i in ids:
            if i == self.eot_id:
                break
            if i == self.sot_id:
                continue
            symbol = self.decoder[i]
            word_end = symbol.endswith("</w>")
            raw.extend(self.byte_decoder[c] for c in (symbol[:-4] if word_end else symbol))
            if word_end:
                raw.extend(b" ")
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.Tensor:
        """texts (T strings) -> (T, context_length) int64: <start>, tokens, <end>, zero padding.

        A text that does not fit is truncated, keeping the end token in the last slot.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text, context_length - 2), self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """``Tokenizer()(texts, context_length)`` with one shared tokenizer built on first use. Returns (T, L) int64."""
    return _default_tokenizer()(texts, context_length)
