"""Fuzzing node and cluster names, topics, and broker/sink URLs.

Why: names become MQTT topic segments and store tags, URLs come from operators' configs.
A valid name must never escape its topic; a bad name or URL must come back as a reason
(name_problem's text, UrlError naming the expected form), never as another exception.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetryd.names import name_problem, sanitize_hostname
from telemetryd.topics import KINDS, node_topic, parse_node_topic, request_cluster
from telemetryd.urls import UrlError, parse_broker_url, parse_listen, parse_sink_url, redact
from tests.chaos.conftest import size

FUZZ = settings(
    max_examples=size(300, 3_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
valid_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
texts = st.text(max_size=80) | st.text(st.sampled_from("ab1._-/+#$ \n\x00é"), max_size=70)


@FUZZ
@given(texts)
def test_name_problem_and_topics(value: str) -> None:
    problem = name_problem(value)
    if problem is None:
        # A valid name stays one segment of its topic and parses back to itself.
        for kind in KINDS:
            parsed = parse_node_topic(node_topic(value, value, kind))
            assert not isinstance(parsed, str), parsed
            assert (parsed.cluster, parsed.node, parsed.kind) == (value, value, kind)
        assert not set(value) & set("/+#\x00\n") and not value.startswith(("$", "_"))
    else:
        assert "expected" in problem or "not a valid name" in problem
        parsed = parse_node_topic(node_topic("c1", value, "report"))
        assert isinstance(parsed, str)


@FUZZ
@given(valid_names, valid_names)
def test_valid_names_round_trip(cluster: str, node: str) -> None:
    assert name_problem(cluster) is None
    assert parse_node_topic(node_topic(cluster, node, "event")) == (cluster, node, "event")
    assert request_cluster(node_topic(cluster, node, "event")) is None


@FUZZ
@given(st.text(max_size=120))
def test_sanitize_hostname_gives_a_valid_name(hostname: str) -> None:
    assert name_problem(sanitize_hostname(hostname)) is None


@FUZZ
@given(texts)
def test_arbitrary_topics(topic: str) -> None:
    parsed = parse_node_topic(topic)
    if not isinstance(parsed, str):
        assert node_topic(*parsed) == topic
    request_cluster(topic)


url_parts = st.sampled_from(
    ["mqtt", "mqtts", "sqlite", "influxdb", "influxdbs", "influxdb2", "influxdb2s", "http", ""]
)
url_chars = st.sampled_from(list("abc019:/@?&=#[]%. +-_\\\x00é"))
urls = (
    st.text(max_size=60)
    | st.builds(
        lambda s, rest: f"{s}://{rest}",
        url_parts,
        st.lists(url_chars | st.sampled_from(["token", "password", "org"])).map("".join),
    )
    | st.builds(
        lambda s, user, host, port, path, query: f"{s}://{user}{host}{port}{path}{query}",
        url_parts,
        st.sampled_from(["", "u@", "u:p@", ":@", "@"]),
        st.sampled_from(["localhost", "127.0.0.1", "[::1]", "[::1", "", "h_st", "ex ample"]),
        st.sampled_from(["", ":1883", ":0", ":65536", ":-1", ":x", ":"]) | st.text(max_size=6),
        st.sampled_from(["", "/", "/db", "/db/x", "/tmp/t.db", "//x"]),
        st.sampled_from(["", "?org=o&bucket=b", "?rp=r", "?tls=2", "?token=s3cret", "?x=1", "#f"]),
    )
)


def _expect_url_error(parse: object, url: str) -> None:
    try:
        parse(url)  # type: ignore[operator]
    except UrlError as exc:
        message = str(exc)
        # The URL (redacted), then why: a form expected, a secret refused, a port or option.
        assert message.startswith(f"{redact(url)!r}: "), message
        assert len(message) > len(repr(redact(url))) + 10, message
        # The URL's secrets never reach the message.
        assert "s3cret" not in message or "s3cret" not in redact(url), message


@FUZZ
@given(urls)
@example("A://[")  # found by this test: "Invalid IPv6 URL" did not say which form was expected
@example("mqtt://[::1")
def test_broker_urls(url: str) -> None:
    try:
        parsed = parse_broker_url(url)
    except UrlError:
        _expect_url_error(parse_broker_url, url)
        return
    assert 0 < parsed.port < 65536 and parsed.host
    assert parse_broker_url(str(parsed)) == parsed


@FUZZ
@given(urls)
@example("influxdb://[/db")  # as above: a URL that does not parse names the sink forms
def test_sink_urls(url: str) -> None:
    try:
        parsed = parse_sink_url(url)
    except UrlError:
        _expect_url_error(parse_sink_url, url)
        return
    assert parsed.kind in ("sqlite", "influxdb2", "influxdb")
    if parsed.kind != "sqlite":
        assert 0 < parsed.port < 65536 and parsed.host


@FUZZ
@given(
    st.text(max_size=40)
    | st.builds(lambda h, p: f"{h}:{p}", st.text(max_size=10), st.text("0123456789-", max_size=6))
)
def test_listen_addresses(value: str) -> None:
    try:
        host, port = parse_listen(value)
    except UrlError as exc:
        message = str(exc)
    else:
        assert host and 0 < port < 65536
        return
    assert "expected HOST:PORT" in message
