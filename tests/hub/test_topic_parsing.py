"""Device publish topics: the common forms, parsed without a query parser (issue 13), give
what the general parser gives; percent-encoded or multi-parameter queries still take it."""

from __future__ import annotations

import urllib.parse

import pytest

from iot_flows.hub._topics import DeviceTopic, TopicKind, parse_device_topic, parse_method_response

_PATCH = "$iothub/twin/PATCH/properties/reported/"
_GET = "$iothub/twin/GET/"


def _general(query: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


@pytest.mark.parametrize("query", [
    "$rid=1", "$rid=42", "$rid=", "$rid=a=b", "$rid=%2Fx", "$rid=a+b", "$rid=1&$version=7",
    "$rid=1;x=2", "$rid=1&$rid=2", "$version=3&$rid=9", "x=1", "", "$rid=caf\u00e9",
])
@pytest.mark.parametrize("prefix", [_PATCH, _GET])
def test_twin_topic_queries_parse_as_the_general_parser_does(prefix, query):
    parsed = parse_device_topic(f"{prefix}?{query}", "dev")
    expected = _general(query)
    if "$rid" not in expected:
        assert parsed is None
        return
    kind = TopicKind.TWIN_PATCH_REPORTED if prefix == _PATCH else TopicKind.TWIN_GET
    version = expected.get("$version") if prefix == _PATCH else None
    assert parsed == DeviceTopic(kind, rid=expected["$rid"], version=version)


def test_twin_topic_without_a_query_is_refused():
    assert parse_device_topic(_PATCH, "dev") is None
    assert parse_device_topic(f"{_PATCH}$rid=1", "dev") is None
    assert parse_device_topic(f"{_GET}x?$rid=1", "dev") is None


@pytest.mark.parametrize("topic", [
    "$iothub/methods/res/200/?$rid=1", "$iothub/methods/res/500/?$rid=ab", "$iothub/methods/res/200/?$rid=",
    "$iothub/methods/res/2%300/?$rid=1", "$iothub/methods/res/200/?$rid=a%2Fb", "$iothub/methods/res/200/?x=1&$rid=7",
    "$iothub/methods/res/x/?$rid=1", "$iothub/methods/res/200?$rid=1", "$iothub/methods/res/\u0662/?$rid=1",
    "$iothub/methods/res/200/", "$iothub/twin/GET/?$rid=1",
])
def test_plain_method_responses_parse_as_the_general_parser_does(topic):
    general = parse_device_topic(topic, "dev")
    plain = parse_method_response(topic)
    if plain is not None:  # the plain form: exactly what the general parser says
        assert general == DeviceTopic(TopicKind.METHOD_RESPONSE, rid=plain[1], status=plain[0])
    elif general is not None and general.kind is TopicKind.METHOD_RESPONSE:
        assert "%" in topic or "&" in topic or not topic.isascii()  # escaped, multi-parameter or non-ASCII forms
