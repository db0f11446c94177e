"""The main job (`speckit demo`) on the embedded default stack.

Starts the embedded model server and the four services, fixes a copy of the
shipped broken crate with the reflex loop (`speckit reflex run`), runs a short
bakeoff (`speckit reflex trials`), prints the outcome, the gate's verdict and
where the report is, and stops everything — also on Ctrl-C or an error.
With no cloud key it says so and shows reflex-only results; never a fake cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from speckit_reflex.bakeoff import BakeoffRunner, RunOptions, copy_tree, find_suite, load_suite
from speckit_reflex.cli.demo_stack import DemoStack, StackError, kill_children
from speckit_reflex.cli.output import CliError, console, print_json
from speckit_reflex.cli.reflex_links import ServiceLinks, reporting
from speckit_reflex.cli.reflex_run import GOOD_OUTCOMES, FixRequest, show_outcome, stream_fix
from speckit_reflex.cli.reflex_trials import (
    DEFAULT_SUITE,
    INTERRUPTED_EXIT,
    TrialProgress,
    cloud_skip_reason,
    ensure_reflex_ready,
    plan_modes,
    result_json,
    scratch_dir,
    show_result,
)
from speckit_reflex.demo import DEMO_CRATE

STEPS = 5


class Demo:
    """The demo's steps, narrated on stderr."""

    def __init__(self, args: argparse.Namespace, err: Console):
        self.args = args
        self.err = err
        self.stack = DemoStack(Path(args.workdir).resolve())
        self.summary: dict[str, Any] = {}

    def step(self, n: int, text: str) -> None:
        self.err.print(f"[bold cyan][{n}/{STEPS}][/] {text}", highlight=False)

    def say(self, text: str) -> None:
        self.err.print(f"      {text}", highlight=False, markup=False)

    async def run(self) -> int:
        try:
            return await self._steps()
        finally:
            self.say("stopping the services and the model server…")
            await self.stack.stop()

    async def _steps(self) -> int:
        if not shutil.which("cargo"):
            raise CliError(
                "cargo is not on PATH: the reflex loop compiles Rust (install rustup's stable toolchain)"
            )
        self.step(1, "starting the embedded model server (llama.cpp, SmolLM2-135M-Instruct, CPU)")
        url = await self.stack.start_model_server()
        self.say(f"model server ready at {url}")
        policy = self.stack.write_policy()
        self.step(2, f"starting the four services on SQLite (policy {policy})")
        addrs = await self.stack.start_services()
        self.say("  ".join(f"{name} {addr}" for name, addr in addrs.items()))
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith("SPECKIT_")
        } | self.stack.client_env()
        async with ServiceLinks(environ) as links:
            fixed = await self._fix(links)
            code = await self._bakeoff(links)
        if self.args.json:
            print_json(self.summary)
        else:
            self._closing_lines()
        if code:
            return code
        return 0 if fixed else 1

    async def _fix(self, links: ServiceLinks) -> bool:
        crate = self.stack.workdir / "broken-crate"
        shutil.rmtree(crate, ignore_errors=True)
        copy_tree(DEMO_CRATE, crate)
        self.step(
            3,
            f"fixing a copy of the demo's broken crate: speckit reflex run {crate} --apply --test",
        )
        request = FixRequest(
            str(crate),
            {
                "apply": True,
                "compiler_fast_path": True,
                "verify_profile": "test",
            },
        )
        outcome = await stream_fix(links, request, self.err)
        self.summary["fix"] = {"workspace": str(crate), **outcome}
        if not self.args.json:
            show_outcome(outcome)
        return outcome["outcome"] in GOOD_OUTCOMES

    async def _bakeoff(self, links: ServiceLinks) -> int:
        suite = load_suite(find_suite(DEFAULT_SUITE))
        tasks = suite.select(limit=max(1, self.args.limit))
        with reporting("router", links):
            snap = await links.router.get_policy(timeout=10)
        modes, cloud_note = plan_modes(
            self.args.mode, cloud_skip_reason(json.loads(snap.json), os.environ)
        )
        self.step(4, f"short bakeoff: {len(tasks)} task(s) of {suite.name} × {', '.join(modes)}")
        if cloud_note:
            self.say(f"{cloud_note}; showing reflex-only results")
        await ensure_reflex_ready(links, 180.0, self.err)
        report_dir = (
            await asyncio.to_thread(Path(self.args.report_dir).resolve)
            if self.args.report_dir
            else ""
        )
        runner = BakeoffRunner(
            links.patchloop,
            links.capsule,
            RunOptions(
                modes=modes,
                max_attempts=max(0, self.args.max_attempts),
                report_dir=str(report_dir),
                session_prefix="demo",
                scratch_root=scratch_dir(str(self.stack.workdir / "bakeoff")),
            ),
        )
        with TrialProgress(len(tasks) * len(modes), modes, self.err) as bar:
            result = await runner.run(suite, tasks, on_trial=bar.on_trial)
        doc = result_json(result, cloud_note)
        self.summary["bakeoff"] = doc
        self.step(5, "results")
        if not self.args.json:
            show_result(doc)
        return INTERRUPTED_EXIT if result.status == "interrupted" else 0

    def _closing_lines(self) -> None:
        fix, bakeoff = self.summary.get("fix", {}), self.summary.get("bakeoff", {})
        out = console()
        out.print()
        if fix:
            by = f" (fixed by {fix['fixed_by']})" if fix["outcome"] == "fixed" else ""
            out.print(f"crate: {fix['outcome']}{by}: {fix['workspace']}", highlight=False)
        if bakeoff.get("verdict"):
            verdict = bakeoff["verdict"]
            if verdict["passed"]:
                word = "PASS"
            elif verdict["status"] == "not_judged":
                word = (
                    "NOT JUDGED — too little evidence (see the notes above); "
                    "reflex stays off for real work until a bakeoff passes"
                )
            else:
                word = "FAIL — reflex stays off for real work until a bakeoff passes"
            out.print(f"bakeoff gate: {word}", highlight=False)
        if bakeoff.get("report"):
            out.print(f"report: {bakeoff['report']['markdown']}", highlight=False)


def run_demo(args: argparse.Namespace) -> int:
    demo = Demo(args, console(stderr=True))
    try:
        return asyncio.run(demo.run())
    except StackError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        kill_children(demo.stack)
        raise
