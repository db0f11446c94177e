"""`speckit reflex trials`: run a bakeoff suite through PatchLoop, with a live
progress bar on stderr, and print per-backend figures, the verdict and the
report paths (or, with --json, one summary document on stdout)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speckit_reflex.bakeoff import (
    BakeoffResult,
    BakeoffRunner,
    RunOptions,
    SuiteError,
    find_suite,
    load_suite,
)
from speckit_reflex.bakeoff.readiness import ReflexNotReady, wait_for_reflex_route
from speckit_reflex.bakeoff.trial import TrialResult
from speckit_reflex.cli.output import CliError, console, print_json, stdout, table
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting, run_with_links
from speckit_reflex.contract import failure_lines, verdict_to_json

DEFAULT_SUITE = "reflex_patchloop_v1"
INTERRUPTED_EXIT = 130


def register(rsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = rsub.add_parser("trials", help="run a bakeoff suite through PatchLoop and record it")
    q.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        help="suite name (under $SPECKIT_SUITES_DIR, .speckit/suites where harvest writes, "
        "or shipped in the package) or folder",
    )
    q.add_argument(
        "--suite-dir",
        default="",
        help="run the suite in this folder (a harvested or private suite) instead of --suite",
    )
    q.add_argument(
        "--mode",
        choices=["reflex", "cloud", "both"],
        default="reflex",
        help="which side runs the tasks (default reflex); success parity needs cloud results "
        "of the same tasks: both, or an earlier recorded run of the suite with them",
    )
    q.add_argument("--limit", type=int, default=0, help="first N tasks (0 = all)")
    q.add_argument("--category", default="", help="only tasks of this category")
    q.add_argument("--concurrency", type=int, default=1, help="trials at once (default 1)")
    q.add_argument(
        "--max-attempts", type=int, default=0, help="patch attempts per trial (0 = policy)"
    )
    q.add_argument(
        "--scratch-dir",
        default="",
        help="where crate copies are made; must lie under PatchLoop's SPECKIT_WORKSPACE_ROOTS "
        "(default $TMPDIR when set, else $SPECKIT_HOME/bakeoff, i.e. .speckit/bakeoff)",
    )
    q.add_argument(
        "--report-dir",
        default="",
        help="report folder on the Capsule server (default .speckit/eval)",
    )
    q.add_argument(
        "--ready-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the Router to see a healthy reflex backend (default 90)",
    )
    q.add_argument("--json", action="store_true", help="final summary as JSON on stdout")
    q.set_defaults(func=run_trials)


def cloud_skip_reason(policy: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """Why cloud trials cannot run here ("" when they can). Never a fake cloud."""
    governance = policy.get("governance", {})
    if governance.get("privacy", {}).get("local_only"):
        return "local_only forbids cloud calls (GR-009)"
    key_env = governance.get("routing", {}).get("cloud", {}).get("api_key_env", "DEEPSEEK_API_KEY")
    if not environ.get(key_env):
        return f"{key_env} is not set (set it to the cloud API key to run cloud trials)"
    return ""


def plan_modes(requested: str, skip_reason: str) -> tuple[tuple[str, ...], str]:
    """The modes to run and the line to say about cloud ("" if nothing to say)."""
    wanted = ("reflex", "cloud") if requested == "both" else (requested,)
    if "cloud" in wanted and skip_reason:
        note = f"cloud: skipped — {skip_reason}"
        return tuple(m for m in wanted if m != "cloud"), note
    return wanted, ""


class TrialProgress:
    """A rich progress bar on stderr with live fixed counts per mode."""

    def __init__(self, total: int, modes: tuple[str, ...], console: Console):
        self._modes = modes
        self._progress = Progress(
            TextColumn("[bold]trials[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            self._counts({m: 0 for m in modes}, {m: 0 for m in modes}), total=total
        )
        self._done: dict[str, int] = {m: 0 for m in modes}

    def _counts(self, fixed: Mapping[str, int], done: Mapping[str, int]) -> str:
        return "  ".join(f"{m} {fixed.get(m, 0)}/{done.get(m, 0)} fixed" for m in self._modes)

    def __enter__(self) -> TrialProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_trial(
        self, trial: TrialResult, finished: int, planned: int, fixed: dict[str, int]
    ) -> None:
        self._done[trial.mode] += 1
        mark = "[green]fixed[/]" if trial.success else f"[red]{trial.outcome}[/]"
        self._progress.console.print(
            f"  {trial.mode:<6} {trial.task_id:<32} {mark} ({trial.attempts} attempt(s), "
            f"{trial.duration_ms / 1000:.1f} s){' — ' + trial.error if trial.error else ''}",
            highlight=False,
        )
        self._progress.update(
            self._task, completed=finished, description=self._counts(fixed, self._done)
        )


def result_json(result: BakeoffResult, cloud_note: str) -> dict[str, Any]:
    """The final summary document of `trials --json`."""
    report = result.report
    return {
        "bakeoff_run_id": result.bakeoff_run_id,
        "suite": result.suite,
        "suite_digest": result.suite_digest,
        "suite_dir": result.suite_dir or None,
        "status": result.status,
        "modes": list(result.modes),
        "cloud_skipped": cloud_note or None,
        **result.summary_json(),
        "verdict": verdict_to_json(report.verdict, "run") if report else None,
        "report": {"json": report.json_path, "markdown": report.markdown_path} if report else None,
        "trials": [t.to_json() for t in result.trials],
    }


_FIGURE_ROWS = (
    ("model", "model"),
    ("tasks fixed", "fixed"),
    ("pass@1 %", "pass_at_1"),
    ("success %", "success_rate"),
    ("model calls", "model_calls"),
    ("JSON compliance %", "json_compliance_rate"),
    ("p50 latency ms", "p50_latency_ms"),
    ("p95 latency ms", "p95_latency_ms"),
    ("p50 TTFT ms", "p50_ttft_ms"),
    ("tokens/s", "mean_tokens_per_s"),
)


def _cache_cell(cache: dict[str, Any]) -> str:
    reuse = "" if cache["reuse"] is None else f", {100 * cache['reuse']:.0f} % reused"
    return f"{cache['status']} ({cache['retries_with_hits']}/{cache['retries']} retries hit{reuse})"


def show_result(doc: dict[str, Any]) -> None:
    """Per-backend figures (one column per backend), verdict and report paths."""
    backends = doc["backends"]
    rows = [[label, *(_dash(b[key]) for b in backends)] for label, key in _FIGURE_ROWS]
    rows[1][1:] = [f"{b['fixed']}/{b['tasks']}" for b in backends]
    rows.append(["cache on retries", *(_cache_cell(b["cache"]) for b in backends)])
    table(
        f"Bakeoff {doc['suite']} ({doc['status']})",
        ["figure", *(f"{b['mode']} · {b['backend']}" for b in backends)],
        rows,
    )
    stdout.print(f"run {doc['bakeoff_run_id']}", highlight=False)
    if doc["speedup"] is not None:
        stdout.print(
            f"wall {doc['wall_s']:.1f} s for {doc['trial_wall_s']:.1f} s of trials at concurrency "
            f"{doc['concurrency']}: {doc['speedup']:.2f}× over running them one after another",
            highlight=False,
        )
    if doc["cloud_skipped"]:
        stdout.print(doc["cloud_skipped"], highlight=False)
    if doc["verdict"]:
        v = doc["verdict"]
        stdout.print(
            f"gate on this run: {v['status']} (baseline: {v['baseline']['kind']})", highlight=False
        )
        for message in failure_lines(v["failures"]):
            stdout.print(f"  - {message}", highlight=False)
    if doc["report"]:
        stdout.print(
            f"report: {doc['report']['json']}\n        {doc['report']['markdown']}", highlight=False
        )


async def ensure_reflex_ready(links: ServiceLinks, timeout_s: float, err: Console) -> None:
    """Block until a forced reflex attempt would be routed, or fail plainly."""
    err.print("waiting for the Router to see a healthy reflex backend…", highlight=False)
    try:
        with reporting("router", links):
            decision = await wait_for_reflex_route(links.router, timeout_s)
    except ReflexNotReady as exc:
        raise CliError(str(exc)) from None
    err.print(f"reflex ready: {decision.model} on {decision.backend}", highlight=False)


async def model_identities(links: ServiceLinks) -> dict[tuple[str, str], str]:
    """(backend, model) -> what that server reports about the weights, recorded with the trials."""
    with reporting("inference", links):
        reply = await links.inference.health()
    return {(b.backend, b.model): b.identity.key for b in reply.backends if b.identity.key}


def _dash(x: Any) -> Any:
    return "–" if x is None else x


def scratch_dir(arg: str) -> Path:
    """The folder trial crates are copied to (created): PatchLoop opens them
    only under its workspace roots, whose default is its working directory.
    A TMPDIR the user set is taken as that choice (the compose stack sets it
    to the shared workspace)."""
    default = (
        os.environ.get("TMPDIR") or Path(os.environ.get("SPECKIT_HOME") or ".speckit") / "bakeoff"
    )
    path = Path(arg or default).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def suite_folder(name: str, folder: str) -> Traversable:
    """The suite to run: --suite-dir's folder (it must hold a manifest.toml), else --suite."""
    if not folder:
        return find_suite(name)
    path = Path(folder).resolve()
    if not (path / "manifest.toml").is_file():
        raise SuiteError(f"--suite-dir {folder}: no manifest.toml in {path}")
    return path


def run_trials(args: argparse.Namespace) -> int:
    try:
        suite = load_suite(suite_folder(args.suite, args.suite_dir))
        tasks = suite.select(limit=max(0, args.limit), category=args.category)
    except SuiteError as exc:
        raise CliError(str(exc)) from None
    err = console(stderr=True)

    async def body(links: ServiceLinks) -> int:
        with reporting("router", links):
            snap = await links.router.get_policy(timeout=10)
        modes, cloud_note = plan_modes(
            args.mode, cloud_skip_reason(json.loads(snap.json or "{}"), os.environ)
        )
        if cloud_note:
            err.print(cloud_note, highlight=False)
        if not modes:
            raise CliError(f"nothing to run: {cloud_note}")
        if "reflex" in modes:
            await ensure_reflex_ready(links, args.ready_timeout, err)
        skipped = {"cloud": cloud_note.removeprefix("cloud: skipped — ")} if cloud_note else {}
        identities = await model_identities(links) if "reflex" in modes else {}
        options = RunOptions(
            modes=modes,
            concurrency=max(1, args.concurrency),
            max_attempts=max(0, args.max_attempts),
            report_dir=args.report_dir,
            scratch_root=scratch_dir(args.scratch_dir),
            skipped_modes=skipped,
            model_identities=identities,
        )
        runner = BakeoffRunner(links.patchloop, links.capsule, options)
        err.print(
            f"suite {suite.name} ({suite.root}): {len(tasks)} task(s) × {', '.join(modes)}",
            highlight=False,
        )
        with reporting("capsule", links), TrialProgress(len(tasks) * len(modes), modes, err) as bar:
            result = await runner.run(suite, tasks, on_trial=bar.on_trial)
        doc = result_json(result, cloud_note)
        if args.json:
            print_json(doc)
        else:
            show_result(doc)
        if result.status == "interrupted":
            err.print(
                f"interrupted: {len(result.trials)} of {result.planned} trials kept",
                highlight=False,
            )
            return INTERRUPTED_EXIT
        return 0

    return run_with_links(body)
