"""The model policy: the seed's TOML, the snapshot shape, the hash, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speckit_reflex.errors import PolicyError
from speckit_reflex.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "model_policy.example.toml"

# SPEC-KIT-978's PolicySnapshot.governance.routing.reflex, verbatim.
SEED_REFLEX = {
    "enabled": False,
    "endpoint": "http://127.0.0.1:3009/v1",
    "model": "qwen2.5-coder-7b-instruct",
    "timeout_ms": 1500,
    "json_schema_required": True,
    "fallback_to_cloud": True,
    "thresholds": {
        "p95_latency_ms": 2000,
        "success_parity_percent": 85,
        "json_schema_compliance_percent": 100,
    },
}


def test_seed_toml_loads_into_the_seed_snapshot_shape() -> None:
    loaded = load_policy(EXAMPLE, environ={})
    snap = json.loads(loaded.snapshot_json)
    reflex = snap["governance"]["routing"]["reflex"]
    for key, value in SEED_REFLEX.items():
        assert reflex[key] == value, key
    # Chain and escalation defaults from SPEC-KIT-978 v1 and MODEL-POLICY.
    assert reflex["model_primary"] == "qwen2.5-coder-7b-instruct"
    assert reflex["model_fallbacks"] == []
    assert reflex["max_failures"] == 2
    assert snap["capture"]["mode"] in {"full_io", "hash", "none"}
    assert snap["governance"]["privacy"] == {"local_only": False}


def test_hash_is_stable_across_runs_and_key_order(tmp_path: Path) -> None:
    a = load_policy(EXAMPLE, environ={})
    b = load_policy(EXAMPLE, environ={})
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    # Same content, tables and keys in another order.
    reordered = tmp_path / "reordered.toml"
    reordered.write_text(
        "[routing.reflex.thresholds]\n"
        "json_schema_compliance_percent = 100\n"
        "success_parity_percent = 85\n"
        "p95_latency_ms = 2000\n"
        "[routing.reflex]\n"
        "json_schema_required = true\n"
        "timeout_ms = 1500\n"
        'model = "qwen2.5-coder-7b-instruct"\n'
        'endpoint = "http://127.0.0.1:3009/v1"\n'
        "fallback_to_cloud = true\n"
        "enabled = false\n"
    )
    assert load_policy(reordered, environ={}).sha256 == a.sha256


def test_hash_changes_with_content(tmp_path: Path) -> None:
    changed = tmp_path / "p.toml"
    changed.write_text(EXAMPLE.read_text().replace("timeout_ms = 1500", "timeout_ms = 1600"))
    assert load_policy(changed, environ={}).sha256 != load_policy(EXAMPLE, environ={}).sha256


def test_chain_and_backends(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text(
        "[routing.reflex]\n"
        'model_primary = "gpt-oss-20b"\n'
        'model_fallbacks = ["qwen3-coder-30b-a3b", "qwen2.5-coder-32b", "gpt-oss-20b"]\n'
        "[[routing.reflex.backends]]\n"
        'name = "sglang"\nkind = "sglang"\nendpoint = "http://127.0.0.1:3009/v1"\n'
        "[[routing.reflex.backends]]\n"
        'name = "vllm"\nkind = "vllm"\nendpoint = "http://127.0.0.1:3010/v1"\nmodels = ["qwen3-coder-30b-a3b"]\n'
    )
    reflex = load_policy(p, environ={}).policy.routing.reflex
    assert reflex.chain == ["gpt-oss-20b", "qwen3-coder-30b-a3b", "qwen2.5-coder-32b"]
    backends = reflex.effective_backends()
    assert [b.name for b in backends] == ["sglang", "vllm"]
    assert backends[0].models == reflex.chain
    assert backends[1].models == ["qwen3-coder-30b-a3b"]


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "SPECKIT_POLICY__ROUTING__REFLEX__ENABLED": "true",
        "SPECKIT_POLICY__PRIVACY__LOCAL_ONLY": "true",
        "SPECKIT_POLICY__CAPTURE__MODE": "none",
        "SPECKIT_POLICY__ROUTING__REFLEX__MODEL_FALLBACKS": '["a", "b"]',
    }
    pol = load_policy(EXAMPLE, environ=env).policy
    assert pol.routing.reflex.enabled is True
    assert pol.privacy.local_only is True
    assert pol.capture.mode == "none"
    assert pol.routing.reflex.model_fallbacks == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "must_mention"),
    [
        ("[routing.reflex]\nenabeld = true\n", ["routing.reflex.enabeld", "unknown key"]),
        ('[routing.reflex]\ntimeout_ms = "fast"\n', ["routing.reflex.timeout_ms"]),
        ("[routing.reflex]\ntimeout_ms = -5\n", ["routing.reflex.timeout_ms"]),
        (
            "[routing.reflex.thresholds]\nsuccess_parity_percent = 120\n",
            ["routing.reflex.thresholds.success_parity_percent", "100"],
        ),
        (
            "[routing.reflex.thresholds]\njson_schema_compliance_percent = -1\n",
            ["routing.reflex.thresholds.json_schema_compliance_percent"],
        ),
        ('[capture]\nmode = "everything"\n', ["capture.mode"]),
        ("[routing.reflex]\nenabled = \n", ["not valid TOML"]),
        (
            '[patchloop]\nbuild_profile = "lint"\n',
            ["patchloop.build_profile", "'lint' is not a profile"],
        ),
        ('[patchloop]\nverify_profile = "cargo test"\n', ["patchloop.verify_profile"]),
        ('[patchloop.profiles]\n"Run Me" = ["sh"]\n', ["patchloop.profiles", "'Run Me'"]),
        ("[patchloop.profiles]\nlint = []\n", ["patchloop.profiles", "'lint'"]),
        (
            "[patchloop]\nbuild_timeout_s = 700\n",
            ["patchloop.build_timeout_s", "max_build_timeout_s 600"],
        ),
        ('[patchloop]\ncompile_command = ["sh"]\n', ["patchloop.compile_command", "unknown key"]),
        (
            "[routing.health]\nprobe_interval_s = 60\n",
            ["routing.health", "stale_after_s (30) must exceed probe_interval_s (60)"],
        ),
        (
            "[routing.verdicts]\nrefresh_s = 600\n",
            ["routing.verdicts", "stale_after_s (300) must exceed refresh_s (600)"],
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "negative-timeout",
        "percent-over-100",
        "percent-negative",
        "bad-enum",
        "bad-toml",
        "unknown-build-profile",
        "unknown-verify-profile",
        "bad-profile-name",
        "empty-profile",
        "timeout-over-cap",
        "argv-key-of-old",
        "health-stale-between-probes",
        "verdict-stale-between-refreshes",
    ],
)
def test_bad_policy_files_name_the_key_and_file(
    tmp_path: Path, text: str, must_mention: list[str]
) -> None:
    p = tmp_path / "model_policy.toml"
    p.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(p, environ={})
    message = str(info.value)
    assert str(p) in message
    for fragment in must_mention:
        assert fragment in message


def test_build_profiles_extend_the_built_in_ones(tmp_path: Path) -> None:
    p = tmp_path / "model_policy.toml"
    p.write_text(
        '[patchloop]\nverify_profile = "lint"\n[patchloop.profiles]\nlint = ["cargo", "fmt", "--check"]\n'
        'check = ["cargo", "check", "--offline", "--all-targets", "--message-format=json"]\n'
    )
    pl = load_policy(p, environ={}).policy.patchloop
    assert set(pl.profiles) == {"check", "test", "clippy", "lint"}
    assert pl.profiles["check"][-2] == "--all-targets" and pl.verify_profile == "lint"


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match=r"nope\.toml: policy file not found"):
        load_policy(missing, environ={})


def test_bad_environment_override_names_the_key() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(EXAMPLE, environ={"SPECKIT_POLICY__ROUTING__REFLEX__TIMEOUT_MS": "-3"})
    assert "routing.reflex.timeout_ms" in str(info.value)
    assert "set by SPECKIT_POLICY__ROUTING__REFLEX__TIMEOUT_MS" in str(info.value)


def test_a_misspelt_environment_override_is_blamed_not_the_file(tmp_path: Path) -> None:
    # The file is fine; the variable names a key that does not exist.
    with pytest.raises(PolicyError) as info:
        load_policy(EXAMPLE, environ={"SPECKIT_POLICY__ROUTING__REFLEX__ENABELD": "true"})
    (line,) = [ln for ln in str(info.value).splitlines() if "enabeld" in ln]
    assert line.strip() == (
        "routing.reflex.enabeld: unknown key, set by SPECKIT_POLICY__ROUTING__REFLEX__ENABELD"
    )
    # The same mistake in the file is the file's, and an unrelated variable is not blamed.
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing.reflex]\nenabeld = true\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad, environ={"SPECKIT_POLICY__ROUTING__REFLEX__ENABLED": "true"})
    assert str(info.value) == f"{bad}: invalid policy\n  routing.reflex.enabeld: unknown key"


def test_policy_cli_reports_bad_file_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from speckit_reflex.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[routing.reflex]\nenabeld = true\n")
    assert main(["policy", "check", "--file", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "enabeld" in captured.err
    # --policy, the name `speckit serve` uses, names the file too.
    assert main(["policy", "check", "--policy", str(bad)]) == 2
    assert "enabeld" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    shutil.copy(EXAMPLE, good)
    assert main(["policy", "show", "--json", "--file", str(good)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["snapshot"]["governance"]["routing"]["reflex"]["timeout_ms"] == 1500
