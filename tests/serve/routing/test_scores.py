"""serve/routing/scores.py: hashing, prefix keys, rendezvous order and the load bound."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from serve.routing import ReplicaStats
from serve.routing.scores import (hash_key, load_bound, rendezvous_order, stable_hash64, text_prefix_keys,
                                  token_prefix_keys, within_bound)


def test_stable_hash_is_the_same_in_another_process() -> None:
    code = "from serve.routing.scores import stable_hash64; print(stable_hash64('abc', 7, b'x'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == stable_hash64("abc", 7, b"x")


def test_stable_hash_separates_parts() -> None:
    assert stable_hash64("ab", "c") != stable_hash64("a", "bc")
    assert stable_hash64(1) != stable_hash64("1")


def test_text_prefix_keys_are_chained_and_block_aligned() -> None:
    a = text_prefix_keys("x" * 100 + "tail-a", 32, 64)
    b = text_prefix_keys("x" * 100 + "tail-b", 32, 64)
    assert len(a) == 3  # 106 chars: three full blocks; the partial block is not a key
    assert a == b  # the tails differ only inside the partial block
    c = text_prefix_keys("x" * 40 + "y" + "x" * 70, 32, 64)
    assert c[0] == a[0] and c[1] != a[1] and c[2] != a[2]  # a change in block 1 changes every later key


def test_prefix_keys_respect_salt_and_max_blocks() -> None:
    text = "z" * 320
    assert len(text_prefix_keys(text, 32, 4)) == 4
    assert text_prefix_keys(text, 32, 4, "base") != text_prefix_keys(text, 32, 4, "adapter-1")
    assert text_prefix_keys("short", 32, 4) == ()


def test_token_prefix_keys() -> None:
    ids = list(range(40))
    keys = token_prefix_keys(ids, 16, 10)
    assert len(keys) == 2
    assert token_prefix_keys(ids[:32] + [99] * 8, 16, 10) == keys
    assert token_prefix_keys([1] + ids[1:], 16, 10)[0] != keys[0]
    with pytest.raises(ValueError):
        token_prefix_keys(ids, 0, 10)


def test_rendezvous_order_is_consistent_when_replicas_change() -> None:
    four = [ReplicaStats(f"r{i}") for i in range(4)]
    three = four[:3]
    moved = 0
    for key in range(2000):
        home4 = four[rendezvous_order(key, four)[0]].name
        home3 = three[rendezvous_order(key, three)[0]].name
        if home4 != "r3":
            moved += home4 != home3  # keys not on the removed replica must stay where they were
    assert moved == 0


def test_rendezvous_spreads_keys_by_weight() -> None:
    reps = [ReplicaStats("a", weight=1.0), ReplicaStats("b", weight=1.0), ReplicaStats("c", weight=2.0)]
    homes = Counter(reps[rendezvous_order(k, reps)[0]].name for k in range(8000))
    assert homes["c"] / 8000 == pytest.approx(0.5, abs=0.03)
    assert homes["a"] / 8000 == pytest.approx(0.25, abs=0.03)


def test_load_bound_formula() -> None:
    reps = [ReplicaStats("a", num_in_flight=6), ReplicaStats("b", num_in_flight=1), ReplicaStats("c", num_waiting=1)]
    # total 8 -> with the new request 9, share 3, times 1.25 -> ceil(3.75) = 4
    assert load_bound(reps, 0, 1.25) == 4
    assert within_bound(reps, 1.25) == (False, True, True)
    heavy = [ReplicaStats("a", weight=3.0), ReplicaStats("b", weight=1.0)]
    assert load_bound(heavy, 0, 1.0) == 1 and load_bound(heavy, 1, 1.0) == 1
    with pytest.raises(ValueError):
        load_bound(reps, 0, 0.9)


@pytest.mark.parametrize("loads", [(0, 0), (5, 0), (9, 9, 9), (100, 0, 3, 7)])
def test_some_replica_is_always_within_bound(loads) -> None:
    reps = [ReplicaStats(f"r{i}", num_in_flight=n) for i, n in enumerate(loads)]
    assert any(within_bound(reps, 1.0))


def test_hash_key_uses_a_deeper_block() -> None:
    keys = (11, 22, 33, 44, 55)
    assert hash_key(keys, 4) == 44
    assert hash_key(keys[:3], 4) is None
    with pytest.raises(ValueError):
        hash_key(keys, 0)


def test_token_prefix_keys_take_any_integer() -> None:
    """Found by fuzzing the gateway (issue #10): a prompt of huge token ids crashed routing with a 500."""
    ids = list(range(16))
    assert token_prefix_keys(ids, 16, 4) == token_prefix_keys([t - 2**32 for t in ids], 16, 4)  # same 32 bits
    assert len(token_prefix_keys([2**70, -2**40] * 8, 16, 4)) == 1
    golden = b"".join(t.to_bytes(4, "little", signed=True) for t in [-1, 0, 5, 2**31 - 1] * 4)
    assert token_prefix_keys([-1, 0, 5, 2**31 - 1] * 4, 16, 1)[0] == stable_hash64(stable_hash64("prefix", ""), golden)
