"""One rule for secret names: a JSON field, a `name=value` pair in text and an
environment variable of the build sandbox are judged by the same names."""

from __future__ import annotations

import pytest

from speckit_reflex.patchloop import sandbox
from speckit_reflex.patchloop.sandbox import ENV_ALLOW, scrub_environment
from speckit_reflex.runtime.redact import REDACTED, is_secret_name, redact, redact_text

SECRET = [
    "api_key",
    "OPENAI_API_KEY",
    "x-api-key",
    "github_token",
    "GITHUB_TOKEN",
    "SPECKIT_AUTH_TOKEN",
    "hf_token",
    "authorization",
    "Proxy-Authorization",
    "password",
    "db_passwd",
    "client_secret",
    "AWS_SECRET_ACCESS_KEY",
    "aws_session_token",
    "access_key",
    "private_key",
    "credentials",
    "credential",
    "cookie",
    "Set-Cookie",
]
PLAIN = ["max_tokens", "prompt_tokens", "tokens_per_s", "model", "author", "keyring", "PATH"]


@pytest.mark.parametrize("name", SECRET)
def test_a_secret_name_is_secret_as_a_field_in_text_and_in_the_sandbox(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert is_secret_name(name)
    assert redact({name: "hunter2-value"}) == {name: REDACTED}
    assert redact_text(f"{name}=hunter2-value") == f"{name}={REDACTED}"
    # Even allow-listed, the sandbox drops it.
    monkeypatch.setattr(sandbox, "ENV_ALLOW", (*ENV_ALLOW, name))
    assert scrub_environment({name: "hunter2-value", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.mark.parametrize("name", PLAIN)
def test_an_ordinary_name_stays(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not is_secret_name(name)
    monkeypatch.setattr(sandbox, "ENV_ALLOW", (*ENV_ALLOW, name))
    assert scrub_environment({name: "384"}) == {name: "384"}
    assert redact({name: "384"}) == {name: "384"}
    assert redact_text(f"{name}=384") == f"{name}=384"


def test_no_variable_the_toolchain_needs_is_a_secret_name() -> None:
    env = {name: "x" for name in ENV_ALLOW}
    assert scrub_environment(env) == env
