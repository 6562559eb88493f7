"""The online store's key layout: slots as Redis Cluster computes them, shards, tags."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.features.exceptions import LayoutError
from driftline.features.keys import SLOTS, KeyLayout, key_slot, shard_of, shard_tags


def test_key_slot_is_redis_clusters() -> None:
    # values from the Redis Cluster specification and CLUSTER KEYSLOT
    assert key_slot("foo") == 12182
    assert key_slot("123456789") == 0x31C3 % SLOTS
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == binascii.crc_hqx(b"foo{}{bar}", 0) % SLOTS  # empty tag
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")


@pytest.mark.parametrize("shards", [1, 2, 3, 8, 64, 100])
def test_each_shard_tag_lands_in_its_share_of_the_slots(shards: int) -> None:
    tags = shard_tags(shards)
    assert len(tags) == len(set(tags)) == shards
    for i, tag in enumerate(tags):
        assert i * SLOTS // shards <= key_slot(tag) < (i + 1) * SLOTS // shards


@given(st.text(min_size=1, max_size=40), st.integers(1, 64))
def test_every_key_of_an_entity_is_in_its_shards_slot(entity: str, shards: int) -> None:
    layout = KeyLayout("driftline", shards)
    shard = shard_of(entity, shards)
    assert 0 <= shard < shards
    key = layout.entity_key("spend", 3, entity)
    assert key.startswith("driftline:fg:spend:v3:") and key.endswith(entity)
    if shards > 1:  # the entity's key, the shard's fence: one slot, whatever the entity holds
        assert key_slot(key) == key_slot(layout.fence_key("tx", shard))
        assert key_slot(key) == key_slot(shard_tags(shards)[shard])


def test_one_redis_keeps_the_keys_it_always_had() -> None:
    layout = KeyLayout("p")
    assert layout.entity_key("g", 1, "u{1}") == "p:fg:g:v1:u{1}"
    assert layout.offsets_key("tx") == "p:offsets:tx"
    assert layout.registry_key("g") == "p:registry:g"


def test_impossible_layouts_are_refused() -> None:
    with pytest.raises(LayoutError, match="between 1 and 1024"):
        KeyLayout("p", 0)
    with pytest.raises(LayoutError, match="braces"):
        KeyLayout("a{b}", 4)
