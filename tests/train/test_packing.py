"""train/batching.py: packing plan, deterministic epochs, collation, and no attention across packed samples."""

from __future__ import annotations

import pytest
import torch

from train.batching import collate, epoch_batches, pack_rows, plan_rows
from train.data import Sample
from train.encode import IGNORE, Encoded, encode_sample
from train.forward import target_logprobs


def test_pack_rows_fits_every_sample_once_within_capacity() -> None:
    lengths = [5, 9, 3, 7, 7, 2, 10, 1, 6, 4]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 6  # 54 tokens: at least 6 rows of 10, and best-fit-decreasing finds 6
    assert pack_rows(lengths, 10) == rows
    with pytest.raises(ValueError, match="more than the row capacity"):
        pack_rows([11], 10)
    assert plan_rows(lengths, 10, packing=False) == [[i] for i in range(10)]


def test_epochs_shuffle_deterministically() -> None:
    rows = [[i] for i in range(20)]
    e0, e0_again, e1 = epoch_batches(rows, 4, 7, 0), epoch_batches(rows, 4, 7, 0), epoch_batches(rows, 4, 7, 1)
    assert e0 == e0_again and e0 != e1
    assert sorted(r[0] for b in e0 for r in b) == list(range(20)) and [len(b) for b in e0] == [4] * 5
    assert epoch_batches(rows, 4, 8, 0) != e0


def test_collate_restarts_positions_and_ignores_padding_and_sample_starts() -> None:
    a = Encoded((10, 11, 12), (IGNORE, 11, 12), False)
    b = Encoded((20, 21), (20, 21), False)  # a text sample: its first label must not be trained from a's end
    batch = collate([a, b], [[0, 1], [1]], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21], [20, 21, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch.labels.tolist() == [[IGNORE, 11, 12, IGNORE, 21], [IGNORE, 21, IGNORE, IGNORE, IGNORE]]
    assert batch.num_tokens == 7 and batch.num_targets == 4


@pytest.mark.timeout(120)
def test_packed_samples_do_not_attend_to_each_other(hf_model, tokenizer) -> None:
    """Log-probs of each sample alone == in one packed row == in padded rows (fp32, the real model)."""
    samples = [encode_sample(tokenizer, Sample(1, ({"role": "user", "content": q},), a), 256) for q, a in [
        ("What is 2 plus 2?", "It is 4."), ("Name a color.", "Blue, like the sky on a clear day."),
        ("Say hi.", "Hi!")]]
    with torch.no_grad():
        alone = [target_logprobs(hf_model, collate(samples, [[i]], 2))[0] for i in range(3)]
        packed, rows = target_logprobs(hf_model, collate(samples, [[0, 1, 2]], 2))
        padded, padded_rows = target_logprobs(hf_model, collate(samples, [[1], [0], [2]], 2))
    torch.testing.assert_close(packed, torch.cat(alone), atol=2e-4, rtol=1e-4)
    assert rows.tolist() == [0] * len(packed)
    torch.testing.assert_close(padded, torch.cat([alone[1], alone[0], alone[2]]), atol=2e-4, rtol=1e-4)
    assert padded_rows.tolist() == [0] * len(alone[1]) + [1] * len(alone[0]) + [2] * len(alone[2])
    # The restarting position ids are what separates the samples: numbered straight through, the second and
    # third samples attend to the first and their log-probs move far beyond the tolerance.
    joined = collate(samples, [[0, 1, 2]], 2)
    joined = type(joined)(joined.input_ids, joined.labels, torch.arange(joined.input_ids.shape[1])[None],
                          joined.num_tokens, joined.num_targets)
    with torch.no_grad():
        contaminated, _ = target_logprobs(hf_model, joined)
    n0 = len(alone[0])
    torch.testing.assert_close(contaminated[:n0], alone[0], atol=2e-4, rtol=1e-4)
    assert (contaminated[n0:] - torch.cat(alone[1:])).abs().max() > 0.05


def test_a_packed_micro_batch_holds_about_batch_size_samples() -> None:
    from train.sft import rows_per_batch

    assert rows_per_batch(num_samples=100, num_rows=100, batch_size=8) == 8  # unpacked: rows are samples
    assert rows_per_batch(num_samples=100, num_rows=25, batch_size=8) == 2  # 4 samples per packed row
    assert rows_per_batch(num_samples=100, num_rows=5, batch_size=8) == 1  # never less than one row
