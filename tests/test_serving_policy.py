"""Traffic policy: weighted shares converge, sticky keys never switch arms (Property 7)."""
import math

import pytest
from hypothesis import given, strategies as st

from serving.policy import TrafficPolicy


@st.composite
def weight_sets(draw):
    n = draw(st.integers(1, 5))
    weights = draw(st.lists(st.integers(1, 100), min_size=n, max_size=n))
    return {f"m/{i + 1}": float(w) for i, w in enumerate(weights)}


@given(weights=weight_sets(), salt=st.text(min_size=1, max_size=8),
       keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True))
def test_property7_shares_converge_and_sticky_keys_never_switch(weights, salt, keys):
    """Feature: mlops-optimization, Property 7: for any weights and any set of keys, the
    observed shares converge to the weights within a binomial tolerance; a sticky key
    always hits the same arm for the life of the experiment."""
    policy = TrafficPolicy(weights, salt=salt)
    n = 4000
    counts = {v: 0 for v in weights}
    for i in range(n):
        counts[policy.choose(f"req-{i}")] += 1
    for version, share in policy.shares().items():
        sd = math.sqrt(share * (1 - share) / n)
        assert abs(counts[version] / n - share) <= 5 * sd + 1e-9, (version, counts, share)
    first = {k: policy.choose(k) for k in keys}
    for _ in range(3):
        assert {k: policy.choose(k) for k in keys} == first
    # the same experiment rebuilt (another replica, a later revision) keeps the arms
    again = TrafficPolicy(dict(weights), salt=salt, revision=policy.revision + 1)
    assert {k: again.choose(k) for k in keys} == first


def test_unkeyed_requests_follow_weights():
    policy = TrafficPolicy({"a/1": 90, "a/2": 10})
    hits = sum(policy.choose() == "a/2" for _ in range(20000))
    assert abs(hits / 20000 - 0.10) < 0.015


def test_zero_weight_and_shadow_versions_get_no_traffic():
    policy = TrafficPolicy({"a/1": 1.0, "a/2": 0.0}, shadow=("a/3",))
    assert {policy.choose(str(i)) for i in range(500)} == {"a/1"}
    assert policy.versions == ["a/1", "a/2", "a/3"]
    with pytest.raises(ValueError):
        TrafficPolicy({"a/1": 0.0})
    with pytest.raises(ValueError):
        TrafficPolicy({"a/1": 1.0, "a/2": -1.0})
    assert TrafficPolicy.from_dict(policy.to_dict()) == policy
