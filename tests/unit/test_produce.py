"""``driftline produce``: what a missing topic is told (no broker needed)."""

from __future__ import annotations

from driftline.streams.cli.produce import key_of, missing_topic


def test_a_missing_topic_lists_what_there_is_and_the_closest_names() -> None:
    many = [f"t{i:02d}" for i in range(12)] + ["transactions", "__consumer_offsets"]
    message = missing_topic("transactionz", many, "b:9092")
    assert message == (
        "topic 'transactionz' does not exist on Kafka at b:9092 (did you mean 'transactions'?); "
        "its topics: t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 and 3 more. "
        "Pass --topic with an existing topic, or create it first."
    )
    assert "it has no topics yet" in missing_topic("x", ["__consumer_offsets"], "b:9092")
    assert "did you mean" not in missing_topic("zzz", ["transactions"], "b:9092")


def test_the_key_is_the_key_field_of_a_json_object() -> None:
    assert key_of(b'{"user_id": "u1"}', "user_id") == b"u1"
    assert key_of(b'{"user_id": 7}', "user_id") == b"7"
    assert key_of(b"not json", "user_id") is None
    assert key_of(b'{"user_id": "u1"}', None) is None
