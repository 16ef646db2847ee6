"""serve/routing/__init__.py: the POLICIES registry and make_policy."""

from __future__ import annotations

import pytest

from lorafleet.errors import ConfigError
from serve.routing import DEFAULT_POLICY, POLICIES, ReplicaStats, RouteContext, RoutingPolicy, make_policy


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_builds_and_answers(name) -> None:
    policy = make_policy(name)
    assert isinstance(policy, RoutingPolicy)
    ctx = RouteContext(0, "m", "x", (ReplicaStats("a"), ReplicaStats("b", num_in_flight=2)), (1, 2, 3, 4, 5))
    assert policy.choose(ctx).replica in ("a", "b")
    assert policy.choose(ctx) == policy.choose(ctx)


def test_default_is_registered() -> None:
    assert DEFAULT_POLICY in POLICIES


def test_settings_are_passed_and_checked() -> None:
    assert make_policy("prefix_aware", {"load_factor": 2.0, "hash_blocks": 2}).hash_blocks == 2
    with pytest.raises(ConfigError, match="no setting"):
        make_policy("round_robin", {"load_factor": 2.0})
    with pytest.raises(ConfigError, match="load_factor"):
        make_policy("hybrid", {"load_factor": 0.5})
    with pytest.raises(ConfigError, match="must be one of"):
        make_policy("random")
    assert make_policy("hybrid", {"placement": "hash"}).placement == "hash"
    with pytest.raises(ConfigError, match="placement must be one of"):
        make_policy("prefix_aware", {"placement": "random"})


def test_context_rejects_empty_and_duplicate_candidates() -> None:
    with pytest.raises(ValueError):
        RouteContext(0, "m", None, ())
    with pytest.raises(ValueError):
        RouteContext(0, "m", None, (ReplicaStats("a"), ReplicaStats("a")))
