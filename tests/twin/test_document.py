"""Twin section rules as pure functions: merge patch, metadata, sizes (property-based)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot_flows._exceptions import BadRequestError
from iot_flows.twin import (
    TwinTooLargeError,
    apply_patch,
    removed_keys_as_nulls,
    section_size,
    validate_patch,
    validate_section_size,
)

keys = st.sampled_from(["a", "b", "c", "d"])
leaves = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5) | st.lists(st.integers(), max_size=3)
patches = st.recursive(leaves, lambda children: st.dictionaries(keys, children, max_size=4), max_leaves=12)
documents = st.dictionaries(keys, st.recursive(leaves.filter(lambda v: v is not None),
                                               lambda c: st.dictionaries(keys, c, max_size=3), max_leaves=8), max_size=4)


def rfc7386(target, patch):
    """Reference JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = rfc7386(result.get(key), value)
    return result


@settings(max_examples=300, deadline=None)
@given(doc=documents, patch=st.dictionaries(keys, patches, max_size=4))
def test_apply_patch_is_rfc7386_merge(doc, patch):
    values, meta = copy.deepcopy(doc), {}
    apply_patch(values, meta, patch, "T", 7)
    assert values == rfc7386(doc, patch)


@settings(max_examples=200, deadline=None)
@given(doc=documents, patch=st.dictionaries(keys, patches, max_size=4))
def test_metadata_mirrors_every_object_node(doc, patch):
    values, meta = {}, {}
    apply_patch(values, meta, doc, "T0", 1)
    apply_patch(values, meta, patch, "T1", 2)

    def check(v, m):
        assert "$lastUpdated" in m and "$lastUpdatedVersion" in m
        if isinstance(v, dict):
            assert set(k for k in m if not k.startswith("$")) == set(v)
            for key, child in v.items():
                check(child, m[key])

    check(values, meta)
    assert meta["$lastUpdated"] == "T1" and meta["$lastUpdatedVersion"] == 2


def test_reported_metadata_has_no_version():
    values, meta = {}, {}
    apply_patch(values, meta, {"x": {"y": 1}}, "T", None)
    assert meta == {"$lastUpdated": "T", "x": {"$lastUpdated": "T", "y": {"$lastUpdated": "T"}}}


def test_removed_keys_are_named_as_null():
    assert removed_keys_as_nulls({"a": 1, "b": {"c": 1, "d": 2}, "$version": 3}, {"b": {"c": 5}, "e": 1}) == {
        "a": None, "b": {"d": None, "c": 5}, "e": 1}


def test_size_rule():
    assert section_size({"ab": "xyz", "n": 1, "t": True, "o": {"k": 1.5}, "$metadata": {"big": "x" * 99}}) == 2 + 3 + 1 + 8 + 1 + 4 + 1 + 1 + 8
    validate_section_size("tags", {"k": "x" * 8000})
    with pytest.raises(TwinTooLargeError):
        validate_section_size("tags", {"k": "x" * 8200})


@pytest.mark.parametrize("patch", [{"a.b": 1}, {"$x": 1}, {"a b": 1}, {"ok": {"\x01": 1}}, {"": 1}, {"n": float("nan")},
                                   {"k" * 1025: 1}, {"n": -(2**52) - 1}])
def test_validate_patch_rejects(patch):
    with pytest.raises(BadRequestError):
        validate_patch("desired", patch)


def test_validate_patch_accepts_nulls_arrays_and_unicode():
    validate_patch("desired", {"a": None, "b": [1, {"c": "é"}], "ключ": "значение", "n": 2**52 - 1})
