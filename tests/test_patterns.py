"""Target patterns: glob/regex/list semantics, errors, and the no-change-on-failure guarantee."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spt_adapter
from spt_adapter.core.targets import compile_pattern
from spt_adapter.core.targets import inspect_targets as match_targets
from spt_adapter.errors import TargetError


class Block(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(Block(), Block(), Block())
        self.tail = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.body(self.head(x)))


def test_star_matches_exactly_one_segment():
    net = Net()
    assert match_targets(net, "body.*") == ["body.0", "body.1", "body.2"]
    assert match_targets(net, "body.*.conv") == ["body.0.conv", "body.1.conv", "body.2.conv"]
    assert match_targets(net, "*") == ["head", "body", "tail"]
    with pytest.raises(TargetError, match="overlap"):
        match_targets(net, ["body", "body.0"])


def test_double_star_matches_any_depth_and_partial_segments():
    net = Net()
    assert match_targets(net, "**.conv") == ["body.0.conv", "body.1.conv", "body.2.conv"]
    assert match_targets(net, "b*y.1") == ["body.1"]
    assert match_targets(net, "body.[02]") == ["body.0", "body.2"]


def test_regex_is_full_match_and_lists_union():
    net = Net()
    assert match_targets(net, r"re:body\.\d") == ["body.0", "body.1", "body.2"]
    with pytest.raises(TargetError, match="matched no module"):
        match_targets(net, r"re:body\.\d\.c")  # partial match is not enough
    assert match_targets(net, ["head", "tail"]) == ["head", "tail"]
    assert match_targets(net, "body.*", exclude="body.1") == ["body.0", "body.2"]


def test_errors_quote_pattern_and_nearest_names():
    net = Net()
    with pytest.raises(TargetError) as info:
        match_targets(net, ["body.*", "bodx.*.conv"])
    msg = str(info.value)
    assert "'bodx.*.conv'" in msg and "body.0.conv" in msg
    with pytest.raises(TargetError, match="exclude pattern 'nothing'"):
        match_targets(net, "body.*", exclude="nothing")
    with pytest.raises(TargetError, match="not a valid regular expression"):
        match_targets(net, "re:body[")
    with pytest.raises(TargetError, match="empty dotted segment"):
        match_targets(net, "body..conv")
    with pytest.raises(TargetError, match="leave no module"):
        match_targets(net, "body.0", exclude="body.*")


def _snapshot(model):
    return (
        [(n, type(m)) for n, m in model.named_modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _same(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize(
    "targets", [["body.*", "nope"], ["head", "body.0", "tail.x"], ["body", "body.1.conv"], "re:(", "", "body"]
)
def test_failed_inject_leaves_model_untouched(targets):
    net = Net()
    before = _snapshot(net)
    if targets == "body":  # a valid pattern whose prior layout is fine: succeed, then control
        spt_adapter.inject(net, targets).eject()
        _same(before, _snapshot(net))
        return
    with pytest.raises(spt_adapter.SPTError):
        spt_adapter.inject(net, targets)
    _same(before, _snapshot(net))


# --- property-based: glob semantics against an independent regex translation -------------------
segment = st.text(alphabet="abc01", min_size=1, max_size=3)
names = st.lists(st.lists(segment, min_size=1, max_size=4).map(".".join), min_size=1, max_size=12)
pattern_segment = st.one_of(segment, st.just("*"), st.just("**"), segment.map(lambda s: s + "*"))
patterns = st.lists(pattern_segment, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns, name=st.lists(segment, min_size=1, max_size=5).map(".".join))
def test_glob_agrees_with_segment_semantics(pattern, name):
    got = compile_pattern(pattern)(name)
    # independent recursive definition over segments
    p, n = pattern.split("."), name.split(".")

    def ref(i, j):
        if i == len(p):
            return j == len(n)
        if p[i] == "**":
            return ref(i + 1, j) or (j < len(n) and ref(i, j + 1))
        if j == len(n):
            return False
        return re.fullmatch(re.escape(p[i]).replace(r"\*", ".*"), n[j]) is not None and ref(i + 1, j + 1)

    assert got == ref(0, 0)
    if "*" not in pattern:
        assert got == (pattern == name)
    if pattern == "**":
        assert got


@settings(max_examples=100, deadline=None)
@given(pattern=st.text(min_size=1, max_size=20))
def test_arbitrary_patterns_never_crash(pattern):
    try:
        compile_pattern(pattern)("a.b.c")
    except TargetError:
        pass
