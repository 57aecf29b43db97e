import pytest
import tiktoken_ext.openai_public
from hypothesis import given
from hypothesis import strategies as st

from rosebench.engine.tokenizer import (
    _R50K_PAT_STR,
    EOS_TOKEN_ID,
    StreamDetokenizer,
    detokenize,
    load_tokenizer,
    unknown_token_text,
    vocabulary_note,
)

MULTIBYTE = "héllo 世界 🌹"


def stream(enc, ids):
    """Every push's text, then the flush's."""
    detok = StreamDetokenizer(enc)
    return [detok.push(t) for t in ids] + [detok.flush()]


def test_gpt2_encodes_like_tiktoken():
    enc = load_tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOS_TOKEN_ID]
    assert enc.n_vocab == EOS_TOKEN_ID + 1


def test_pattern_is_tiktokens_r50k():
    assert tiktoken_ext.openai_public.r50k_pat_str == _R50K_PAT_STR


def test_r50k_alias_and_cache():
    assert load_tokenizer("r50k_base").encode(MULTIBYTE) == load_tokenizer("gpt2").encode(MULTIBYTE)
    assert load_tokenizer() is load_tokenizer()


def test_multibyte_round_trip():
    enc = load_tokenizer()
    assert enc.decode(enc.encode(MULTIBYTE)) == MULTIBYTE


def test_stream_equals_full_decode_for_every_prefix():
    enc = load_tokenizer()
    ids = enc.encode(MULTIBYTE)
    for k in range(len(ids) + 1):
        assert "".join(stream(enc, ids[:k])) == enc.decode(ids[:k]), k


def test_character_split_over_tokens_is_emitted_once_complete():
    enc = load_tokenizer()
    ids = enc.encode("🌹")
    assert len(ids) == 3  # 4 UTF-8 bytes spread over 3 tokens: the case the detokenizer exists for
    assert stream(enc, ids) == ["", "", "🌹", ""]


def test_no_partial_character_is_emitted():
    enc = load_tokenizer()
    pieces = stream(enc, enc.encode(MULTIBYTE))
    assert "\ufffd" not in "".join(pieces)
    assert pieces[-1] == ""


def test_flush_turns_pending_bytes_into_replacement():
    enc = load_tokenizer()
    first = enc.encode("🌹")[:1]
    assert stream(enc, first) == ["", "\ufffd"]
    assert "".join(stream(enc, first)) == enc.decode(first)


@given(st.lists(st.integers(0, EOS_TOKEN_ID), max_size=40))
def test_stream_matches_decode_for_any_ids(ids):
    enc = load_tokenizer()
    assert "".join(stream(enc, ids)) == enc.decode(ids)


@given(st.text(max_size=40))
def test_stream_round_trips_any_text(text):
    enc = load_tokenizer()
    assert "".join(stream(enc, enc.encode_ordinary(text))) == text


def test_unknown_encoding_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"'no_such_encoding'.*only 'gpt2' is available offline"):
        load_tokenizer("no_such_encoding")


# ids the tokenizer does not know: a model with a larger vocabulary emits them


def test_unknown_id_detokenizes_to_a_visible_placeholder():
    enc = load_tokenizer()
    ids = [15496, 58559, 995, EOS_TOKEN_ID + 1]
    assert unknown_token_text(58559) == "<|unknown:58559|>"
    assert detokenize(enc, ids) == "Hello<|unknown:58559|> world<|unknown:50257|>"
    assert "".join(stream(enc, ids)) == detokenize(enc, ids)
    assert detokenize(enc, enc.encode(MULTIBYTE)) == MULTIBYTE  # known ids: exactly enc.decode


def test_unknown_id_ends_a_pending_character():
    enc = load_tokenizer()
    ids = [*enc.encode("🌹")[:1], 60000, *enc.encode("a")]
    assert stream(enc, ids) == ["", "\ufffd<|unknown:60000|>", "a", ""]
    assert detokenize(enc, ids) == "\ufffd<|unknown:60000|>a"


@given(st.lists(st.integers(0, 60000), max_size=40))
def test_stream_matches_detokenize_for_any_model_ids(ids):
    enc = load_tokenizer()
    assert "".join(stream(enc, ids)) == detokenize(enc, ids)


def test_vocabulary_note_says_what_a_differing_vocabulary_does():
    enc = load_tokenizer()
    assert vocabulary_note(enc, 50257, "engine.model=gpt2") is None
    larger = vocabulary_note(enc, 60000, "engine.weights=big")
    assert larger.startswith("engine.weights=big: ") and "60000" in larger and "<|unknown:ID|>" in larger
    smaller = vocabulary_note(enc, 1000, "engine.weights=small")
    assert "1000" in smaller and "<|endoftext|>" in smaller and "max_new_tokens" in smaller
