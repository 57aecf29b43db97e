"""Tokenizers: GPT-2's (tiktoken, offline), a Hugging Face folder's ``tokenizer.json`` (the ``tokenizers``
package) for the Llama family, or none (``NoTokenizer``: a random-weights preset, which runs token ids only);
and a UTF-8 safe streaming detokenizer.

A checkpoint may have more token ids than the tokenizer (a vocabulary padded to a multiple of 64, say
50304, or extended with tokens of its own): an id the tokenizer does not know is detokenized to the visible
placeholder ``<|unknown:ID|>`` (``unknown_token_text``), never an error, so that such a run still writes
its outputs and results."""

from __future__ import annotations

import codecs
import functools
import json
import re
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from rosebench.engine.config import EOS_TOKEN_ID, ModelConfig

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


class NoTokenizerError(ValueError):
    """Text was given to a model that has no tokenizer."""


class NoTokenizer:
    """A random-weights preset of a family whose tokenizer is not shipped: ids run, text is refused in one
    line that says how to give a tokenizer, and outputs have no text (``None``), rather than a made-up one."""

    name = "none"
    eot_token = None

    def __init__(self, source: str, n_vocab: int) -> None:
        self.source = source
        self.n_vocab = n_vocab
        self.n_ordinary = n_vocab  # random prompts may draw any id the model has

    def encode(self, text: str, allowed_special: str = "all") -> list[int]:
        raise NoTokenizerError(
            f"{self.source} has random weights and no tokenizer, so it cannot encode a text prompt: give "
            "engine.weights=<Hugging Face folder with tokenizer.json>, or prompts as token ids "
            "(workload=random, or workload=jsonl with prompt_token_ids)"
        )

    def decode(self, token_ids: list[int]) -> None:
        return None


# GPT-2's byte-level alphabet: each byte is shown as a printable character (bytes_to_unicode in the
# tokenizers' ByteLevel pre-tokenizer); the reverse map turns a byte-level token back into its bytes.
_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
_BYTE_OF_CHAR = {chr(b): b for b in _PRINTABLE} | {
    chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in _PRINTABLE)
}
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens (Llama 2, Mistral)


class HFTokenizer:
    """A folder's ``tokenizer.json`` with the tiktoken calls the workloads, runner and server use. Prompts
    are encoded as Hugging Face and vLLM do (with the tokenizer's BOS, special tokens in the text
    recognised); ``eot_token`` is the tokenizer's own EOS (``tokenizer_config.json``), else the model's."""

    name = "tokenizer.json"

    def __init__(self, folder: Path, model: ModelConfig) -> None:
        from tokenizers import Tokenizer

        file = folder / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as err:  # not JSON, or not a tokenizer
            raise ValueError(
                f"{file}: cannot be read as a tokenizer ({' '.join(str(err).split())[:200]})"
            ) from None
        self.n_vocab = self._tok.get_vocab_size(with_added_tokens=True)
        self.n_ordinary = self._tok.get_vocab_size(with_added_tokens=False)  # ids before the added tokens
        decoder = json.loads(self._tok.to_str()).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        self._special = {token.content for token in self._tok.get_added_tokens_decoder().values()}
        own = _config_eos(folder / "tokenizer_config.json")
        eos = None if own is None else self._tok.token_to_id(own)
        self.eot_token = eos if eos is not None else (model.eos_token_ids or (None,))[0]

    def encode(self, text: str, allowed_special: str = "all") -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, token_ids: list[int]) -> str:
        if any(not 0 <= t < self.n_vocab for t in token_ids):
            raise KeyError("an id beyond the tokenizer's")  # detokenize writes those as placeholders
        return self._tok.decode(token_ids, skip_special_tokens=False)

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        piece = self._tok.id_to_token(token_id) if 0 <= token_id < self.n_vocab else None
        if piece is None:
            raise KeyError(token_id)
        if piece in self._special:
            return piece.encode()
        if self._byte_level:
            return bytes(_BYTE_OF_CHAR[c] for c in piece)
        if byte := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(byte.group(1), 16)])
        return piece.replace("\u2581", " ").encode()  # SentencePiece's word-start mark is a space


def _config_eos(config_file: Path) -> str | None:
    """``tokenizer_config.json``'s ``eos_token`` (a string, or a dict with its ``content``), if any."""
    try:
        eos = json.loads(config_file.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    return eos.get("content") if isinstance(eos, dict) else eos if isinstance(eos, str) else None


Tokenizer = tiktoken.Encoding | HFTokenizer | NoTokenizer


def model_tokenizer(model: ModelConfig, weights: str | None, source: str) -> Tokenizer:
    """The run's tokenizer: GPT-2's for a GPT-2 (tiktoken), a Hugging Face folder's ``tokenizer.json`` for
    another family, else ``NoTokenizer`` (token ids only)."""
    if model.architecture == "gpt2":
        return load_tokenizer()
    folder = Path(weights).expanduser() if weights is not None else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        return HFTokenizer(folder, model)
    return NoTokenizer(source, model.vocab_size)


class StreamDetokenizer:
    """Turn token ids into text one token at a time, emitting only whole characters.

    GPT-2's byte-level BPE can split one character over several tokens, so each token's bytes go through
    an incremental UTF-8 decoder that holds back an incomplete character until its last byte arrives.
    ``"".join(push(t) for t in ids) + flush()`` equals ``enc.decode(ids)`` (invalid bytes become U+FFFD).
    An id the tokenizer does not know ends the pending character (its bytes become U+FFFD, as at a flush)
    and comes out as ``unknown_token_text(id)``: the same text ``detokenize`` gives.
    """

    def __init__(self, enc: tiktoken.Encoding | HFTokenizer) -> None:
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


def detokenize(enc: Tokenizer, token_ids: list[int]) -> str | None:
    """``enc.decode(token_ids)``, except that an id the tokenizer does not know becomes
    ``unknown_token_text(id)`` instead of raising: a model's output is always written. ``None`` for a
    model without a tokenizer (``NoTokenizer``): it has no text, and none is made up."""
    try:
        return enc.decode(token_ids)
    except (KeyError, OverflowError):
        stream = StreamDetokenizer(enc)
        return "".join(stream.push(t) for t in token_ids) + stream.flush()


def vocabulary_note(enc: Tokenizer, model_vocab_size: int, source: str) -> str | None:
    """One line for the start of a run whose model's vocabulary differs from the tokenizer's (``None`` when
    they agree, or there is no tokenizer): what its extra ids look like in the outputs, or that it can never
    stop at end of text."""
    if isinstance(enc, NoTokenizer):
        return None
    n_vocab, who = enc.n_vocab, "GPT-2" if enc.name == "gpt2" else enc.name
    if model_vocab_size > n_vocab:
        return (
            f"{source}: the model has {model_vocab_size} token ids, the {who} tokenizer {n_vocab}; an "
            f"output id from {n_vocab} up is written as {UNKNOWN_TOKEN_FORMAT.format(id='ID')} "
            "in outputs.jsonl's text"
        )
    if enc.eot_token is not None and model_vocab_size <= enc.eot_token:
        return (
            f"{source}: the model has {model_vocab_size} token ids, fewer than the {who} tokenizer's "
            f"{n_vocab}; it cannot emit <|endoftext|> (id {enc.eot_token}), so every request generates "
            "its max_new_tokens"
        )
    return None
