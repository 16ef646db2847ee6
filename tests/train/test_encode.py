"""train/encode.py: the base's chat template, prompt tokens labelled -100, the reply trained through end-of-turn."""

from __future__ import annotations

from lorafleet.chat import chat_token_ids
from train.data import PreferencePair, Sample
from train.encode import IGNORE, encode_all, encode_pair, encode_sample


def test_prompt_tokens_carry_ignore_label_and_reply_is_trained(tokenizer) -> None:
    context = ({"role": "user", "content": "What is 2 plus 2?"},)
    e = encode_sample(tokenizer, Sample(1, context, "2 plus 2 is 4."), 512)
    prompt_ids = chat_token_ids(tokenizer, list(context))  # exactly what the server feeds the model
    assert list(e.input_ids[:len(prompt_ids)]) == prompt_ids
    assert all(label == IGNORE for label in e.labels[:len(prompt_ids)])
    trained = [t for t, label in zip(e.input_ids, e.labels) if label != IGNORE]
    assert trained == list(e.input_ids[len(prompt_ids):])
    assert tokenizer.decode(trained) == "2 plus 2 is 4.<|im_end|>"  # end-of-turn is trained, so the model stops
    assert trained[-1] == tokenizer.eos_token_id
    assert e.num_targets == len(trained) and not e.is_truncated


def test_multi_turn_masks_earlier_turns_as_context(tokenizer) -> None:
    context = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"})
    e = encode_sample(tokenizer, Sample(1, context, "6"), 512)
    trained = [t for t, label in zip(e.input_ids, e.labels) if label != IGNORE]
    assert tokenizer.decode(trained) == "6<|im_end|>"
    assert "<|im_start|>assistant\n4<|im_end|>" in tokenizer.decode(e.input_ids)  # the earlier reply is context


def test_text_samples_train_every_token_and_truncation_is_flagged(tokenizer) -> None:
    e = encode_sample(tokenizer, Sample(1, (), None, "one two three four five six"), 512)
    assert e.labels == e.input_ids and e.num_targets == len(e.input_ids) - 1
    cut = encode_sample(tokenizer, Sample(1, (), None, "word " * 100), 16)
    assert len(cut.input_ids) == 16 and cut.is_truncated


def test_a_prompt_longer_than_the_limit_leaves_no_target_and_is_dropped(tokenizer) -> None:
    long = Sample(1, ({"role": "user", "content": "very long question " * 50},), "ok")
    short = Sample(2, ({"role": "user", "content": "q"},), "ok")
    encoded, dropped = encode_all(tokenizer, [long, short], 64)
    assert dropped == [long] and len(encoded) == 1


def test_pairs_share_the_prompt(tokenizer) -> None:
    pair = PreferencePair(1, ({"role": "user", "content": "Capital of France?"},), "Paris.", "It is Paris, a city in France.")
    e = encode_pair(tokenizer, pair, 512)
    n = len(chat_token_ids(tokenizer, list(pair.context)))
    assert e.chosen.input_ids[:n] == e.rejected.input_ids[:n]
    assert tokenizer.decode([t for t in e.chosen.labels if t != IGNORE]) == "Paris.<|im_end|>"
    assert e.num_targets == e.chosen.num_targets < e.rejected.num_targets
