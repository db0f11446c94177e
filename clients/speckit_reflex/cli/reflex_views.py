"""How `speckit reflex` shows things to people (rich tables) and to machines
(plain JSON-ready dicts)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from speckit_reflex.cli.output import stdout, table
from speckit_reflex.contract import failure_lines
from speckit_reflex.v1 import inference_pb2, patchloop_pb2, router_pb2

_STATS_ROWS = (
    ("attempts", "total_attempts", "{}"),
    ("success %", "success_rate", "{:.1f}"),
    ("JSON compliance %", "json_compliance_rate", "{:.1f}"),
    ("p50 latency ms", "p50_latency_ms", "{:.1f}"),
    ("p95 latency ms", "p95_latency_ms", "{:.1f}"),
    ("p50 TTFT ms", "p50_ttft_ms", "{:.1f}"),
    ("p95 TTFT ms", "p95_ttft_ms", "{:.1f}"),
    ("tokens/s", "mean_tokens_per_s", "{:.1f}"),
)


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _cache(s: dict[str, Any]) -> str:
    # No reported cached tokens is "unknown", never a miss (vLLM omits zeros).
    return "unknown" if s["cache_hit_rate"] is None else f"{100 * s['cache_hit_rate']:.0f} %"


def show_stats(doc: dict[str, Any]) -> None:
    """The seed-shaped statistics: one column per mode, then per model."""
    groups = [("reflex", doc["reflex"]), ("cloud", doc["cloud"])]
    groups += [(f"{m['mode']} · {m['model'] or '-'}", m) for m in doc.get("models", [])]
    rows = [[label, *(_num(g[key], fmt) for _, g in groups)] for label, key, fmt in _STATS_ROWS]
    rows.append(["cache hit", *(_cache(g) for _, g in groups)])
    table(f"Bakeoff statistics, last {doc['period']}", ["", *(name for name, _ in groups)], rows)


_STATUS = {
    "pass": "[green]pass[/]",
    "fail": "[bold red]FAIL[/]",
    "not_judged": "[yellow]not judged[/]",
}


def show_verdict(doc: dict[str, Any]) -> None:
    """Thresholds with their status, the baseline used, the figures; live statistics apart."""
    rf, cf = doc["reflex"], doc["cloud"]
    rows = [
        [
            r["name"],
            _num(r["observed"]),
            f"{r['comparison']} {r['required']:g}",
            _STATUS[r["status"]],
        ]
        for r in doc["results"]
    ]
    runs = ", ".join(doc["bakeoff_run_ids"]) or "none in the window"
    table(
        f"Reflex gate, suite {doc['suite'] or '?'}"
        + (f" version {doc['suite_digest'][:12]}" if doc.get("suite_digest") else "")
        + f" (bakeoff runs: {runs})",
        ["threshold", "observed", "required", "status"],
        rows,
    )
    b = doc["baseline"]
    stdout.print(
        f"baseline: {b['kind']}" + (f" — {b['description']}" if b["description"] else ""),
        highlight=False,
    )
    figures = [
        ("tasks judged", rf["tasks"], cf["tasks"]),
        ("fixed", rf["fixed"], cf["fixed"]),
        ("success %", _num(rf["success_rate"]), _num(cf["success_rate"])),
        ("pass@1 %", _num(rf["pass_at_1"]), _num(cf["pass_at_1"])),
        (
            "p50 / p95 latency ms",
            f"{_num(rf['p50_latency_ms'])} / {_num(rf['p95_latency_ms'])}",
            f"{_num(cf['p50_latency_ms'])} / {_num(cf['p95_latency_ms'])}",
        ),
        (
            "JSON compliance % (of replies)",
            _num(rf["json_compliance_rate"]),
            _num(cf["json_compliance_rate"]),
        ),
        (
            "availability % (errors / calls)",
            f"{_num(rf['availability_percent'])} ({rf['errors']}/{rf['model_calls']})",
            f"{_num(cf['availability_percent'])} ({cf['errors']}/{cf['model_calls']})",
        ),
        ("skipped trials", rf["skipped"], cf["skipped"]),
    ]
    table(
        f"Same tasks: {doc['paired_tasks']} compared, {doc['unpaired_tasks']} ran by one mode only",
        ["figure", "reflex", "cloud"],
        [[a, str(b_), str(c)] for a, b_, c in figures],
    )
    if doc["invalidated"]:
        stdout.print(f"[bold red]invalidated:[/] {doc['invalidated']}", highlight=False)
    for message in failure_lines(doc["failures"]):
        stdout.print(f"  - {message}", highlight=False)
    live = doc["live_statistics"]
    stdout.print(
        f"live statistics (not judged), last {doc['period']}: reflex {live['reflex']['total_attempts']} attempts, "
        f"cloud {live['cloud']['total_attempts']} attempts (speckit reflex bakeoff)",
        highlight=False,
    )
    stdout.print(f"verdict: {_STATUS[doc['status']]}")


def health_json(reply: inference_pb2.HealthReply) -> dict[str, Any]:
    return {
        "healthy": bool(reply.backends) and all(b.healthy for b in reply.backends),
        "backends": [
            MessageToDict(
                b, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for b in reply.backends
        ],
    }


def show_health(reply: inference_pb2.HealthReply) -> None:
    rows = [
        [
            b.backend,
            b.kind,
            b.endpoint,
            b.model,
            "yes" if b.healthy else "NO",
            f"{'✓' if b.reachable else '✗'} {'✓' if b.model_listed else '✗'} {'✓' if b.generation_ok else '✗'}",
            _num(b.probe_latency_ms),
            b.reason,
        ]
        for b in reply.backends
    ]
    table(
        "Model backends",
        [
            "backend",
            "kind",
            "endpoint",
            "model",
            "healthy",
            "reach/listed/gen",
            "probe ms",
            "reason",
        ],
        rows,
    )


def models_json(reply: inference_pb2.ListModelsReply) -> dict[str, Any]:
    return {
        "models": [
            MessageToDict(
                m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for m in reply.models
        ],
        "unreachable": [
            {"backend": b.backend, "endpoint": b.endpoint, "reason": b.reason}
            for b in reply.unreachable
        ],
    }


def show_models(reply: inference_pb2.ListModelsReply) -> None:
    table(
        "Models",
        ["backend", "model", "owned by", "max len"],
        [[m.backend, m.id, m.owned_by, m.max_model_len or "–"] for m in reply.models],
    )
    for b in reply.unreachable:
        stdout.print(
            f"[yellow]unreachable:[/] {b.backend} ({b.endpoint}): {b.reason}", highlight=False
        )


def build_cache_json(info: patchloop_pb2.BuildCacheInfo) -> dict[str, Any]:
    return {
        "dir": info.dir or None,
        "enabled": info.enabled,
        "size_bytes": info.size_bytes,
        "max_bytes": info.max_bytes,
        "workspaces": info.workspaces,
        "slots": info.slots,
    }


def cache_clear_json(reply: patchloop_pb2.ClearBuildCacheReply) -> dict[str, Any]:
    return {
        "dir": reply.dir or None,
        "removed": reply.removed,
        "freed_bytes": reply.freed_bytes,
        "busy": reply.busy,
    }


def show_cache_clear(reply: patchloop_pb2.ClearBuildCacheReply) -> None:
    if not reply.dir:
        stdout.print("the build cache is off: nothing to clear", highlight=False)
        return
    busy = f"; {reply.busy} in use by a run, kept" if reply.busy else ""
    stdout.print(
        f"removed {reply.removed} build dir(s), {_mib(reply.freed_bytes)} freed from {reply.dir}{busy}",
        highlight=False,
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def status_json(
    snap: router_pb2.PolicySnapshot,
    cache: patchloop_pb2.BuildCacheInfo,
    builds: patchloop_pb2.BuildSettings,
) -> dict[str, Any]:
    policy = json.loads(snap.json) if snap.json else {}
    routing = policy.get("governance", {}).get("routing", {})
    return {
        "source": snap.source or "<defaults>",
        "sha256": snap.sha256,
        "reflex": routing.get("reflex", {}),
        "thresholds": routing.get("reflex", {}).get("thresholds", {}),
        "cloud": routing.get("cloud", {}),
        "privacy": policy.get("governance", {}).get("privacy", {}),
        "capture": policy.get("capture", {}),
        "build_cache": build_cache_json(cache),
        "sandbox": {
            "layers": [
                {"name": x.name, "active": x.active, "detail": x.detail} for x in builds.sandbox
            ],
            "profiles": {p.name: list(p.command) for p in builds.profiles},
            "build_profile": builds.build_profile,
            "verify_profile": builds.verify_profile,
            "build_timeout_s": builds.build_timeout_s,
            "max_build_timeout_s": builds.max_build_timeout_s,
            "workspace_roots": list(builds.workspace_roots),
        },
        "policy": policy,
    }


def show_status(doc: dict[str, Any]) -> None:
    r, t, c, s = doc["reflex"], doc["thresholds"], doc["cloud"], doc["sandbox"]
    rows = [
        ["policy", doc["source"]],
        ["sha256", doc["sha256"]],
        ["reflex enabled", r.get("enabled")],
        ["model chain", " → ".join([r.get("model_primary", ""), *r.get("model_fallbacks", [])])],
        [
            "backends",
            ", ".join(f"{b['name']} ({b['kind']}, {b['endpoint']})" for b in r.get("backends", [])),
        ],
        ["timeout ms", r.get("timeout_ms")],
        ["max failures", r.get("max_failures")],
        ["fallback to cloud", r.get("fallback_to_cloud")],
        [
            "thresholds",
            f"p95 < {t.get('p95_latency_ms')} ms, parity >= {t.get('success_parity_percent')} %, "
            f"JSON >= {t.get('json_schema_compliance_percent')} %",
        ],
        ["cloud", f"{c.get('model')} at {c.get('endpoint')} (key from ${c.get('api_key_env')})"],
        ["local_only", doc["privacy"].get("local_only")],
        ["capture mode", doc["capture"].get("mode")],
        ["build cache", _cache_line(doc["build_cache"])],
        [
            "build profiles",
            f"{s['build_profile']} (build), {s['verify_profile'] or 'none'} (verify); "
            f"{', '.join(s['profiles'])}",
        ],
        [
            "build time limit",
            f"{s['build_timeout_s']} s (requests up to {s['max_build_timeout_s']} s)",
        ],
        ["workspace roots", ", ".join(s["workspace_roots"]) or "none: every run is refused"],
    ]
    # Each sandbox layer on its own row; a missing one is said loudly.
    rows += [
        [
            f"sandbox: {x['name']}",
            f"on — {x['detail']}" if x["active"] else f"[bold red]MISSING[/] — {x['detail']}",
        ]
        for x in s["layers"]
    ]
    table("Reflex status", ["setting", "value"], rows)


def _cache_line(c: dict[str, Any]) -> str:
    if not c["enabled"]:
        return "off (every run builds from scratch)"
    return (
        f"{c['dir']}: {_mib(c['size_bytes'])} of {_mib(c['max_bytes'])}, "
        f"{c['workspaces']} workspace(s), {c['slots']} build dir(s)"
    )
