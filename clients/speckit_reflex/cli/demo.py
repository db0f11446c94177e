"""`speckit demo`: the main job. Registered here with light imports only; the
job itself (`demo_job`) loads the harness, gRPC and httpx when it runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="the main job: local model + services, fix a broken crate, short bakeoff"
    )
    p.add_argument(
        "--limit", type=int, default=3, help="bakeoff tasks (default 3: a few minutes on 2 cores)"
    )
    p.add_argument(
        "--max-attempts", type=int, default=2, help="patch attempts per bakeoff task (default 2)"
    )
    p.add_argument(
        "--mode",
        choices=["reflex", "both"],
        default="both",
        help="both = reflex and, when its API key is set, cloud (default)",
    )
    p.add_argument(
        "--workdir", default=".speckit/demo", help="state of the demo (SQLite, logs, crate copy)"
    )
    p.add_argument(
        "--report-dir",
        default="",
        help="folder of the bakeoff report, under the workdir (default <workdir>/eval); the services "
        "write only under their SPECKIT_HOME, which the demo sets to the workdir",
    )
    p.add_argument("--json", action="store_true", help="final summary as JSON on stdout")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (see `demo_job.Demo`)."""
    from speckit_reflex.cli.demo_job import run_demo as run

    return run(args)
