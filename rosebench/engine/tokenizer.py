"""GPT-2 tokenizer that works offline, and a UTF-8 safe streaming detokenizer.

A checkpoint may have more token ids than the tokenizer (a vocabulary padded to a multiple of 64, say
50304, or extended with tokens of its own): an id the tokenizer does not know is detokenized to the visible
placeholder ``<|unknown:ID|>`` (``unknown_token_text``), never an error, so that such a run still writes
its outputs and results."""

from __future__ import annotations

import codecs
import functools
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from rosebench.engine.config import EOS_TOKEN_ID

# tiktoken downloads its ranks on first use; we ship GPT-2's (== r50k_base) so that runs work offline.
_RANKS_PATH = Path(__file__).parent / "assets" / "gpt2.tiktoken"
_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# r50k_pat_str from tiktoken_ext/openai_public.py (copied: tiktoken_ext is not a public API).
_R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_OFFLINE_NAMES = ("gpt2", "r50k_base")
UNKNOWN_TOKEN_FORMAT = "<|unknown:{id}|>"


def unknown_token_text(token_id: int) -> str:
    """The text an id the tokenizer does not know detokenizes to: ``<|unknown:58559|>``."""
    return UNKNOWN_TOKEN_FORMAT.format(id=token_id)


@functools.cache
def load_tokenizer(name: str = "gpt2") -> tiktoken.Encoding:
    """Return the named tiktoken encoding; "gpt2" / "r50k_base" come from the packaged ranks file."""
    if name in _OFFLINE_NAMES:
        return tiktoken.Encoding(
            name="gpt2",
            pat_str=_R50K_PAT_STR,
            mergeable_ranks=load_tiktoken_bpe(str(_RANKS_PATH), expected_hash=_RANKS_SHA256),
            special_tokens={"<|endoftext|>": EOS_TOKEN_ID},
            explicit_n_vocab=EOS_TOKEN_ID + 1,
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # unknown name, or a download that fails offline: both mean "not available"
        raise ValueError(
            f"tokenizer {name!r} is not available ({type(e).__name__}); only 'gpt2' is available offline"
        ) from e


class StreamDetokenizer:
    """Turn token ids into text one token at a time, emitting only whole characters.

    GPT-2's byte-level BPE can split one character over several tokens, so each token's bytes go through
    an incremental UTF-8 decoder that holds back an incomplete character until its last byte arrives.
    ``"".join(push(t) for t in ids) + flush()`` equals ``enc.decode(ids)`` (invalid bytes become U+FFFD).
    An id the tokenizer does not know ends the pending character (its bytes become U+FFFD, as at a flush)
    and comes out as ``unknown_token_text(id)``: the same text ``detokenize`` gives.
    """

    def __init__(self, enc: tiktoken.Encoding) -> None:
        self._enc = enc
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "")."""
        try:
            data = self._enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError):  # an id beyond the tokenizer's: a model with a larger vocabulary
            return self.flush() + unknown_token_text(token_id)
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End the stream: any bytes still pending become replacement characters."""
        return self._decoder.decode(b"", final=True)


def detokenize(enc: tiktoken.Encoding, token_ids: list[int]) -> str:
    """``enc.decode(token_ids)``, except that an id the tokenizer does not know becomes
    ``unknown_token_text(id)`` instead of raising: a model's output is always written."""
    try:
        return enc.decode(token_ids)
    except (KeyError, OverflowError):
        stream = StreamDetokenizer(enc)
        return "".join(stream.push(t) for t in token_ids) + stream.flush()


def vocabulary_note(enc: tiktoken.Encoding, model_vocab_size: int, source: str) -> str | None:
    """One line for the start of a run whose model's vocabulary differs from the tokenizer's (``None`` when
    they agree): what its extra ids look like in the outputs, or that it can never stop at end of text."""
    n_vocab = enc.n_vocab
    if model_vocab_size > n_vocab:
        return (
            f"{source}: the model has {model_vocab_size} token ids, the GPT-2 tokenizer {n_vocab}; an "
            f"output id from {n_vocab} up is written as {UNKNOWN_TOKEN_FORMAT.format(id='ID')} "
            "in outputs.jsonl's text"
        )
    if model_vocab_size <= enc.eot_token:
        return (
            f"{source}: the model has {model_vocab_size} token ids, fewer than the GPT-2 tokenizer's "
            f"{n_vocab}; it cannot emit <|endoftext|> (id {enc.eot_token}), so every request generates "
            "its max_new_tokens"
        )
    return None
