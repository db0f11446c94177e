"""Process settings shared by every service, from SPECKIT_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from speckit_reflex.contract import DEFAULT_ADDRS

DEFAULT_HOME = Path(".speckit")


class RuntimeSettings(BaseSettings):
    """Where each service listens, where the database and policy are.

    Every field reads SPECKIT_<NAME>, e.g. SPECKIT_ROUTER_ADDR.
    """

    model_config = SettingsConfigDict(env_prefix="SPECKIT_", extra="ignore")

    router_addr: str = DEFAULT_ADDRS["router"]
    inference_addr: str = DEFAULT_ADDRS["inference"]
    patchloop_addr: str = DEFAULT_ADDRS["patchloop"]
    capsule_addr: str = DEFAULT_ADDRS["capsule"]
    # Default: a SQLite file under .speckit/ in the working directory.
    database_url: str = ""
    # Path of model_policy.toml; empty = built-in defaults (reflex disabled).
    policy: str = ""
    home: Path = DEFAULT_HOME
    # Bound of PatchLoop's persistent build cache under home/cache/targets
    # (least recently used entries evicted); 0 turns the cache off.
    build_cache_max_mb: int = Field(default=8192, ge=0)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # Seconds in-flight RPCs get to finish after SIGTERM.
    grace_s: float = Field(default=10.0, ge=0)
    # Bearer token every RPC must carry (metadata "authorization: Bearer <t>").
    auth_token: str = ""
    # TLS: server certificate and key; with a client CA, mTLS is required.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Client side: CA that signed the servers' certificates.
    tls_ca: str = ""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # host:port of the Prometheus /metrics endpoint; empty = no metrics at all.
    metrics_addr: str = ""
    # host:port of the OpenAI-compatible HTTP endpoint; `serve all` runs it
    # only when set, `serve openai` on contract.OPENAI_DEFAULT_ADDR when unset.
    openai_addr: str = ""
    # PatchLoop: os.pathsep-separated directories under which workspaces are
    # accepted; empty = the service's working directory (patchloop/roots.py).
    workspace_roots: str = ""

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'speckit.db').resolve()}"

    def addr_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))
