"""Model identity: what each server reports about the weights behind a model
name, through Health and ListModels (SGLang and vLLM at the wire level)."""

from __future__ import annotations

import pytest

from .conftest import backends_policy


@pytest.mark.parametrize(
    ("kind", "key", "source"),
    [
        ("sglang", "sglang:/weights/qwen-7b-v1", "/get_model_info"),
        ("vllm", "vllm:/weights/qwen-7b-v1@0.9.2", "/v1/models root"),
    ],
)
async def test_identity_is_the_weights_the_server_reports(kind, key, source, fake_factory, adapter):
    fake = await fake_factory(kind=kind, weights="/weights/qwen-7b-v1")
    llm, _, _ = await adapter(backends_policy(("a", kind, fake)))
    health = (await llm.health("a", refresh=True)).backends[0]
    assert health.healthy, health.reason
    assert (health.identity.key, health.identity.weights, health.identity.source) == (
        key,
        "/weights/qwen-7b-v1",
        source,
    )
    (card,) = (await llm.list_models("a")).models
    assert card.identity.key == key
    # New weights under the same model name: another identity.
    fake.weights = "/weights/qwen-7b-v2"
    changed = (await llm.health("a", refresh=True)).backends[0]
    assert changed.model == health.model and changed.identity.key != key
    assert "qwen-7b-v2" in changed.identity.key
