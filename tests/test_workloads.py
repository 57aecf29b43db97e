import itertools
import json
import math
import os
import re
import statistics

import pytest

from rosebench.engine.sequence import SamplingParams
from rosebench.engine.tokenizer import EOS_TOKEN_ID, load_tokenizer
from rosebench.scheduler.config import SchedulerConfig
from rosebench.workload import WORKLOAD_KINDS, Vocabulary, WorkloadError, build_workload
from rosebench.workload.arrivals import arrival_times
from rosebench.workload.prompt import Prompt


def build(kind, num_requests=8, *, sampling=None, seed=0, request_rate=math.inf, vocab=None, **options):
    return build_workload(
        WORKLOAD_KINDS[kind](**options),
        num_requests=num_requests,
        sampling=sampling or SamplingParams(max_new_tokens=8),
        tokenizer=load_tokenizer(),
        seed=seed,
        request_rate=request_rate,
        vocab=vocab,
    )


def prompts(requests):
    return [r.prompt_token_ids for r in requests]


# fixed


def test_fixed_repeats_the_prompt():
    requests = build("fixed", 16, prompt="Hello world")
    assert [r.request_id for r in requests] == list(range(16))
    assert all(r.prompt_token_ids == [15496, 995] for r in requests)
    assert all(r.prompt_text == "Hello world" for r in requests)
    assert all(r.params.max_new_tokens == 8 and r.arrival_s == 0.0 for r in requests)


def test_fixed_default_prompt_is_hello():
    assert prompts(build("fixed", 2)) == [[15496], [15496]]


# random


def test_random_lengths_ids_and_output_len():
    requests = build("random", 50, input_len=20, output_len=5)
    assert all(len(r.prompt_token_ids) == 20 and r.params.max_new_tokens == 5 for r in requests)
    assert all(0 <= t < EOS_TOKEN_ID for r in requests for t in r.prompt_token_ids)
    assert len({tuple(p) for p in prompts(requests)}) == 50


def test_random_output_len_defaults_to_max_new_tokens():
    assert all(r.params.max_new_tokens == 8 for r in build("random", 4, input_len=10))


def test_random_range_ratio_bounds():
    requests = build("random", 400, input_len=100, output_len=10, range_ratio=0.5)
    in_lens = [len(r.prompt_token_ids) for r in requests]
    out_lens = [r.params.max_new_tokens for r in requests]
    assert 50 <= min(in_lens) <= 55 and 145 <= max(in_lens) <= 150  # uniform over [50, 150]: ends reached
    assert min(out_lens) == 5 and max(out_lens) == 15


def test_random_short_lengths_stay_at_least_one():
    requests = build("random", 100, input_len=1, output_len=1, range_ratio=0.9)
    assert {len(r.prompt_token_ids) for r in requests} == {1, 2}
    assert {r.params.max_new_tokens for r in requests} == {1, 2}


def test_random_is_reproducible_from_seed():
    a = build("random", 10, seed=3, input_len=16, range_ratio=0.5)
    b = build("random", 10, seed=3, input_len=16, range_ratio=0.5)
    c = build("random", 10, seed=4, input_len=16, range_ratio=0.5)
    assert prompts(a) == prompts(b)
    assert prompts(a) != prompts(c)


@pytest.mark.parametrize("options", [{"range_ratio": 1.0}, {"range_ratio": -0.1}, {"input_len": 0}])
def test_random_rejects_bad_options(options):
    key, value = next(iter(options.items()))
    with pytest.raises(WorkloadError, match=rf"^workload\.{key}={value}: must be"):
        build("random", 2, **options)


# shared prefix


def test_shared_prefix_structure():
    requests = build("shared_prefix", 10, num_prefixes=3, prefix_len=16, suffix_len=4)
    ids = prompts(requests)
    assert all(len(p) == 20 for p in ids)
    for i, p in enumerate(ids):
        assert p[:16] == ids[i % 3][:16]  # round-robin over prefixes
    assert len({tuple(p[:16]) for p in ids}) == 3
    assert len({tuple(p) for p in ids}) == 10  # every suffix distinct
    assert all(0 <= t < EOS_TOKEN_ID for p in ids for t in p)


def test_shared_prefix_is_reproducible_from_seed():
    def run(seed):
        return prompts(build("shared_prefix", seed=seed, num_prefixes=2, prefix_len=8, suffix_len=2))

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_shared_prefix_rejects_zero_lengths():
    with pytest.raises(WorkloadError, match=r"^workload\.prefix_len=0: must be >= 1$"):
        build("shared_prefix", 2, prefix_len=0)


# jsonl


def write_lines(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reads_text_ids_and_overrides(tmp_path):
    path = write_lines(
        tmp_path,
        [
            json.dumps({"prompt": "Hello world"}),
            "",
            json.dumps({"prompt_token_ids": [1, 2, 3], "max_new_tokens": 3}),
            "   ",
            json.dumps({"prompt": "Hello", "max_new_tokens": None}),
        ],
    )
    requests = build("jsonl", 5, path=str(path))
    assert prompts(requests) == [[15496, 995], [1, 2, 3], [15496], [15496, 995], [1, 2, 3]]  # cycled
    assert [r.params.max_new_tokens for r in requests] == [8, 3, 8, 8, 3]
    assert [r.prompt_text for r in requests[:3]] == ["Hello world", None, "Hello"]


def test_jsonl_takes_the_first_lines(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"prompt_token_ids": [i]}) for i in range(1, 6)])
    assert prompts(build("jsonl", 2, path=path)) == [[1], [2]]


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"prompt": "a", "prompt_token_ids": [1]}', "exactly one of 'prompt'"),
    ('{"max_new_tokens": 3}', "exactly one of 'prompt'"),
    ('{"prompt": 5}', "'prompt' must be a string, got int"),
    ('{"prompt_token_ids": "1 2"}', "'prompt_token_ids' must be a list of integers"),
    ('{"prompt_token_ids": [1, true]}', "'prompt_token_ids' must be a list of integers"),
    ('{"prompt_token_ids": [1, 2.5]}', "'prompt_token_ids' must be a list of integers"),
    ('{"prompt_token_ids": [50257]}', r"token id 50257 out of range; ids must be in \[0, 50257\)"),
    ('{"prompt_token_ids": [-1]}', "token id -1 out of range"),
    ('{"prompt_token_ids": []}', "empty prompt"),
    ('{"prompt": ""}', "empty prompt"),
    ('{"prompt": "a", "max_new_tokens": 0}', "'max_new_tokens' must be an integer >= 1, got 0"),
    ('{"prompt": "a", "max_new_tokens": "4"}', "'max_new_tokens' must be an integer >= 1"),
    ('{"prompt": "a", "max_tokens": 4}', r"unknown key\(s\) \['max_tokens'\]; allowed keys"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path, [json.dumps({"prompt": "ok"}), "", line])
    with pytest.raises(WorkloadError) as info:
        build("jsonl", 3, path=str(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert "\n" not in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_jsonl_non_utf8_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(path))}:2: not UTF-8"):
        build("jsonl", 2, path=path)


def test_jsonl_missing_and_empty_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(WorkloadError, match=rf"^workload\.path={re.escape(str(missing))}: no such file$"):
        build("jsonl", 1, path=str(missing))
    with pytest.raises(WorkloadError, match=r"^workload\.path: required with workload=jsonl"):
        build("jsonl", 1)
    empty = write_lines(tmp_path, ["", ""])
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(empty))}: no prompts"):
        build("jsonl", 1, path=str(empty))


def test_jsonl_path_must_be_a_regular_file(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(WorkloadError, match=rf"^workload\.path={re.escape(str(folder))}: is a directory; "):
        build("jsonl", 1, path=str(folder))
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)  # no writer: reading it would block, so it must be told apart without opening it
    with pytest.raises(WorkloadError, match=r": is a named pipe \(FIFO\); allowed: a regular JSONL file"):
        build("jsonl", 1, path=str(fifo))


# the model's vocabulary

SMALL = Vocabulary(1000, "engine.weights=small")
LARGE = Vocabulary(60000, "engine.weights=large")


@pytest.mark.parametrize("kind", ["random", "shared_prefix"])
def test_random_ids_are_drawn_within_a_smaller_model_vocabulary(kind):
    options = {"input_len": 64} if kind == "random" else {"prefix_len": 32, "suffix_len": 32}
    ids = [t for p in prompts(build(kind, 16, vocab=SMALL, **options)) for t in p]
    assert max(ids) < 1000 and len(set(ids)) > 300


@pytest.mark.parametrize("kind", ["random", "shared_prefix"])
def test_a_larger_model_vocabulary_draws_the_tokenizers_ordinary_ids(kind):
    """Ids beyond the tokenizer's are never what text encodes to: the draw, and so a seed's prompts, stay
    what they are with GPT-2's own vocabulary."""
    options = {"input_len": 64} if kind == "random" else {"prefix_len": 32, "suffix_len": 32}
    assert prompts(build(kind, 16, vocab=LARGE, **options)) == prompts(build(kind, 16, **options))


def test_shared_prefix_that_cannot_have_distinct_suffixes_is_refused():
    with pytest.raises(WorkloadError, match=r"^workload\.suffix_len=1: 3 distinct suffixes per prefix"):
        build("shared_prefix", 3, vocab=Vocabulary(2), num_prefixes=1, prefix_len=4, suffix_len=1)


def test_fixed_prompt_beyond_a_smaller_vocabulary_names_both_keys():
    with pytest.raises(WorkloadError) as info:
        build("fixed", 2, vocab=SMALL)
    message = str(info.value)
    assert message.startswith("workload.prompt='Hello': encodes to token id 15496, outside ")
    assert "engine.weights=small" in message and "below 1000" in message


def test_jsonl_ids_are_checked_against_the_model_vocabulary(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"prompt_token_ids": [55000, 1]})])
    assert prompts(build("jsonl", 1, path=str(path), vocab=LARGE)) == [[55000, 1]]  # the model has it
    with pytest.raises(WorkloadError, match=r":1: token id 55000 out of range; ids must be in \[0, 50257\)"):
        build("jsonl", 1, path=str(path))
    text = write_lines(tmp_path, [json.dumps({"prompt_token_ids": [999]}), json.dumps({"prompt": "Hello"})])
    with pytest.raises(WorkloadError) as info:
        build("jsonl", 2, path=str(text), vocab=SMALL)
    assert str(info.value).startswith(f"{text}:2: 'prompt' encodes to token id 15496, outside ")
    assert "engine.weights=small" in str(info.value)


def test_every_kinds_prompt_ids_are_checked_by_the_builder():
    """A kind that forgets to check its ids is still caught, before any request is made."""

    class Careless:
        kind = "careless"

        def prompts(self, num_requests, tokenizer, seed, max_new_tokens, vocab=None):
            return [Prompt(token_ids=[1, 5000]) for _ in range(num_requests)]

    with pytest.raises(WorkloadError, match=r"^workload=careless: request 0's prompt has token id 5000"):
        build_workload(
            Careless(),
            num_requests=2,
            sampling=SamplingParams(),
            tokenizer=load_tokenizer(),
            seed=0,
            vocab=SMALL,
        )


# dispatch and sampling


def test_each_kind_holds_only_its_own_options():
    assert set(WORKLOAD_KINDS) == {"fixed", "random", "shared_prefix", "jsonl"}
    with pytest.raises(TypeError, match="input_len"):
        WORKLOAD_KINDS["fixed"](input_len=3)
    with pytest.raises(WorkloadError, match=r"^workload\.kind=random: this is the fixed workload"):
        WORKLOAD_KINDS["fixed"](kind="random")


def test_random_sampling_gets_distinct_reproducible_seeds():
    sampling = SamplingParams(temperature=0.8, top_k=5)
    seeds = [r.params.seed for r in build("fixed", 6, sampling=sampling, seed=7)]
    assert len(set(seeds)) == 6 and None not in seeds
    assert seeds == [r.params.seed for r in build("fixed", 6, sampling=sampling, seed=7)]
    assert seeds != [r.params.seed for r in build("fixed", 6, sampling=sampling, seed=8)]
    request = build("fixed", 1, sampling=sampling)[0]
    assert (request.params.temperature, request.params.top_k) == (0.8, 5)


def test_explicit_sampling_seed_is_offset_by_request_id():
    requests = build("fixed", 4, sampling=SamplingParams(temperature=1.0, seed=100))
    assert [r.params.seed for r in requests] == [100, 101, 102, 103]


def test_greedy_without_seed_stays_unseeded():
    assert all(r.params.seed is None for r in build("fixed", 3))


def test_build_attaches_arrivals():
    requests = build("fixed", 50, request_rate=5.0, seed=1)
    times = [r.arrival_s for r in requests]
    assert times == sorted(times) and times[0] > 0
    assert times == [r.arrival_s for r in build("fixed", 50, request_rate=5.0, seed=1)]


# arrivals


def gaps(times):
    return [b - a for a, b in itertools.pairwise([0.0, *times])]


def test_infinite_rate_means_all_at_once():
    assert arrival_times(5, math.inf) == [0.0] * 5


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (4.0, 0.5), (0.25, 2.0)])
def test_gamma_gaps_have_the_requested_mean_and_spread(burstiness, cv):
    rate = 10.0
    g = gaps(arrival_times(20_000, rate, burstiness, seed=0))
    mean = statistics.fmean(g)
    assert mean == pytest.approx(1 / rate, rel=0.05)
    # gamma(shape k): coefficient of variation 1/sqrt(k); Poisson arrivals have CV 1
    assert statistics.pstdev(g) / mean == pytest.approx(cv, rel=0.08)


def test_arrivals_are_seeded_and_increasing():
    a = arrival_times(100, 3.0, seed=5)
    assert a == arrival_times(100, 3.0, seed=5)
    assert a != arrival_times(100, 3.0, seed=6)
    assert all(t > 0 for t in gaps(a))


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, math.inf)])
def test_arrival_parameters_are_checked_by_the_scheduler_config(rate, burstiness):
    with pytest.raises(ValueError, match=r"^scheduler\.(request_rate|burstiness)=.*must be"):
        SchedulerConfig(request_rate=rate, burstiness=burstiness)
