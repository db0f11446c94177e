"""The bakeoff report: `reflex-bakeoff-<UTC timestamp>.json` for machines and
`.md` for people (what it covers, summary, verdict, per-model tables, trials,
and the latency distribution of reflex vs cloud as an SVG chart with a legend
beside the report, `-latency.svg`, linked from it, plus the same numbers as a
text histogram)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from speckit_reflex.capsule.report_chart import latency_svg
from speckit_reflex.capsule.stats import LATENCY_BUCKETS_MS
from speckit_reflex.capsule.store import TrialSummary
from speckit_reflex.contract import (
    enum_name,
    failure_lines,
    stats_to_seed_json,
    verdict_to_json,
)
from speckit_reflex.runtime.redact import redact, redact_text
from speckit_reflex.v1 import capsule_pb2, common_pb2

REFLEX, CLOUD = common_pb2.ROUTING_MODE_REFLEX, common_pb2.ROUTING_MODE_CLOUD
_BAR_WIDTH = 40


@dataclass
class ReportInputs:
    """Everything a report shows, gathered by the core."""

    generated_at: datetime
    verdict: capsule_pb2.CheckThresholdsReply
    histogram: dict[int, list[int]]
    trials: list[TrialSummary]
    bakeoff_run: dict[str, Any] | None


def bucket_labels() -> list[str]:
    lows = (0, *LATENCY_BUCKETS_MS)
    labels = [f"{lo}-{hi}" for lo, hi in zip(lows, LATENCY_BUCKETS_MS, strict=False)]
    return [*labels, f">={LATENCY_BUCKETS_MS[-1]}"]


def report_json(r: ReportInputs) -> dict[str, Any]:
    """The JSON report document."""
    return {
        "generated_at": r.generated_at.isoformat().replace("+00:00", "Z"),
        "stats": stats_to_seed_json(r.verdict.stats),
        "verdict": verdict_to_json(r.verdict),
        "latency_histogram": {
            "buckets_ms": bucket_labels(),
            **{
                enum_name(common_pb2.RoutingMode, m): counts
                for m, counts in sorted(r.histogram.items())
            },
        },
        "trials": [
            {**asdict(t), "mode": enum_name(common_pb2.RoutingMode, t.mode)} for t in r.trials
        ],
        "bakeoff_run": r.bakeoff_run,
    }


def _fmt(x: float | None, unit: str = "") -> str:
    return "–" if x is None else f"{x:.1f}{unit}"


def _stats_row(label: str, s: dict[str, Any]) -> str:
    cache = "–" if s["cache_hit_rate"] is None else f"{100 * s['cache_hit_rate']:.0f} %"
    return (
        f"| {label} | {s['total_attempts']} | {_fmt(s['success_rate'], ' %')} | {_fmt(s['json_compliance_rate'], ' %')} "
        f"| {_fmt(s['p50_latency_ms'])} | {_fmt(s['p95_latency_ms'])} | {_fmt(s['p50_ttft_ms'])} "
        f"| {_fmt(s['p95_ttft_ms'])} | {_fmt(s['mean_tokens_per_s'])} | {cache} |"
    )


_STATS_HEADER = (
    "| {first} | attempts | success | JSON compliance | p50 latency ms | p95 latency ms "
    "| p50 TTFT ms | p95 TTFT ms | tokens/s | cache hit |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


CHART_TITLE = "PatchAttempt latency, reflex vs cloud"


def _series(histogram: dict[int, list[int]]) -> dict[str, list[int]]:
    n = len(bucket_labels())
    return {"reflex": histogram.get(REFLEX, [0] * n), "cloud": histogram.get(CLOUD, [0] * n)}


def latency_chart_svg(histogram: dict[int, list[int]]) -> str:
    return latency_svg(CHART_TITLE, bucket_labels(), _series(histogram))


def _latency_chart(histogram: dict[int, list[int]], svg_name: str) -> list[str]:
    labels = bucket_labels()
    series = _series(histogram)
    reflex, cloud = series["reflex"], series["cloud"]
    top = max([*reflex, *cloud, 1])
    lines = [
        f"![{CHART_TITLE} (blue: reflex, orange: cloud)]({svg_name})",
        "",
        "```text",
        f"{'latency ms':>12}  {'reflex (#)':<{_BAR_WIDTH + 8}} cloud (=)",
    ]
    for lab, a, b in zip(labels, reflex, cloud, strict=True):
        bar_a = "#" * round(_BAR_WIDTH * a / top)
        bar_b = "=" * round(_BAR_WIDTH * b / top)
        lines.append(f"{lab:>12}  {bar_a:<{_BAR_WIDTH}} {a:>7} {bar_b:<{_BAR_WIDTH}} {b:>7}")
    lines.append("```")
    return lines


def _digest(doc: dict[str, Any]) -> str:
    """` (version <digest>)`: the suite's tasks as judged, "" for runs recorded without one."""
    digest = doc.get("suite_digest")
    return f" (version {digest[:12]})" if digest else ""


def _covers(doc: dict[str, Any]) -> str:
    """What the report is about: the bakeoff run when there is one, else the window."""
    stats, run = doc["stats"], doc["bakeoff_run"]
    span = f"{stats['start']} to {stats['end']}"
    if run:
        return (
            f"Covers bakeoff run `{run['id']}` (suite {run['suite']}{_digest(run)}, mode "
            f"{run['mode']}, status {run['status']}): its attempts from {span}. "
            f"Generated {doc['generated_at']}."
        )
    return f"Covers every attempt from {span} (the last {stats['period']}). Generated {doc['generated_at']}."


def report_markdown(doc: dict[str, Any], r: ReportInputs, svg_name: str = "") -> str:
    """The Markdown report, for people; `svg_name` is the chart file beside it."""
    stats, verdict = doc["stats"], doc["verdict"]
    rf, cf = verdict["reflex"], verdict["cloud"]
    lines = [
        "# Reflex bakeoff report",
        "",
        _covers(doc),
        "",
        "## Verdict",
        "",
        f"**{verdict['status'].upper().replace('_', ' ')}** — from bakeoff run(s) "
        f"{', '.join(f'`{r}`' for r in verdict['bakeoff_run_ids']) or '(none)'} of suite "
        f"{verdict['suite'] or '?'}{_digest(verdict)}"
        + (f", reflex model `{verdict['model']}`" if verdict["model"] else "")
        + f" (at least {verdict['min_samples']} tasks per threshold).",
        "",
        f"- Baseline: {verdict['baseline']['kind']}"
        + (f" — {verdict['baseline']['description']}" if verdict["baseline"]["description"] else "")
        + ".",
        f"- Tasks compared (both modes): {verdict['paired_tasks']}; ran by one mode only: {verdict['unpaired_tasks']}.",
        f"- Reflex: {rf['fixed']}/{rf['tasks']} tasks fixed ({_fmt(rf['success_rate'], ' %')}), pass@1 "
        f"{_fmt(rf['pass_at_1'], ' %')}, p50/p95 latency {_fmt(rf['p50_latency_ms'])}/{_fmt(rf['p95_latency_ms'])} ms, "
        f"JSON compliance {_fmt(rf['json_compliance_rate'], ' %')} of {rf['replies']} replies, availability "
        f"{_fmt(rf['availability_percent'], ' %')} ({rf['errors']} errors in {rf['model_calls']} calls).",
        f"- Cloud: {cf['fixed']}/{cf['tasks']} tasks fixed ({_fmt(cf['success_rate'], ' %')}), "
        f"{cf['skipped']} skipped.",
    ]
    if verdict["invalidated"]:
        lines.append(f"- Invalidated: {verdict['invalidated']}.")
    lines += ["", "| threshold | observed | required | status |", "|---|---:|---:|---|"]
    lines += [
        f"| {x['name']} | {_fmt(x['observed'])} | {x['comparison']} {x['required']:g} | {x['status']} |"
        for x in verdict["results"]
    ]
    lines += [f"- {m}" for m in failure_lines(verdict["failures"])]
    lines += ["", "## Live statistics (every attempt in the window; not judged)"]
    lines += ["", "### Per mode", "", _STATS_HEADER.format(first="mode")]
    lines += [_stats_row("reflex", stats["reflex"]), _stats_row("cloud", stats["cloud"])]
    lines += ["", "### Per model", "", _STATS_HEADER.format(first="mode / model")]
    lines += [
        _stats_row(f"{m['mode']} / `{m['model'] or '(unnamed)'}`", m) for m in stats["models"]
    ]
    lines += ["", "## Latency distribution, reflex vs cloud", ""]
    lines += _latency_chart(r.histogram, svg_name)
    if doc["trials"]:
        lines += [
            "",
            "## Trials",
            "",
            "| mode / model | tasks | solved | solved on attempt 1 | mean attempts | JSON valid |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {x['mode']} / `{x['model']}` | {x['tasks']} | {x['successes']} | {x['first_attempt_successes']} "
            f"| {x['mean_attempts']:.2f} | {x['json_valid']} |"
            for x in doc["trials"]
        ]
    if doc["bakeoff_run"]:
        run = doc["bakeoff_run"]
        lines += [
            "",
            f"Bakeoff run `{run['id']}`: suite {run['suite']}, mode {run['mode']}, status {run['status']}.",
        ]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, r: ReportInputs) -> tuple[Path, Path]:
    """Write the files atomically (temp file, then rename); return the absolute
    paths of the JSON and the Markdown (the chart SVG is beside them)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = r.generated_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    # Stored values are redacted already; the report is redacted again as a
    # whole, so that nothing it adds (a run's suite name, a reason) escapes.
    doc = redact(report_json(r))
    svg = out_dir / f"reflex-bakeoff-{stamp}-latency.svg"
    paths = (out_dir / f"reflex-bakeoff-{stamp}.json", out_dir / f"reflex-bakeoff-{stamp}.md", svg)
    bodies = (
        json.dumps(doc, indent=2, default=str) + "\n",
        redact_text(report_markdown(doc, r, svg.name)),
        latency_chart_svg(r.histogram),
    )
    # The chart first, so a report never links to a missing file.
    for path, body in reversed(list(zip(paths, bodies, strict=True))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, path)
    return paths[0], paths[1]
