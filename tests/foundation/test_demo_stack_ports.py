"""The demo's stack starts again on fresh ports when a port it picked is taken first.

Between `pick_port()` and the child's own bind, any process may take the port
(on a loaded CI machine it happens); the child then exits saying so and the
demo must not fail for it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from speckit_reflex.cli import demo_stack
from speckit_reflex.cli.demo_stack import DemoStack, PortLost
from speckit_reflex.clients.health import is_serving
from speckit_reflex.clients.ports import pick_port
from speckit_reflex.demo import DEMO_POLICY


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port another process listens on: any bind of ours to it fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _picks(first: list[int]) -> object:
    """pick_port that hands out `first` before fresh ports."""
    queue = list(first)

    def pick() -> int:
        return queue.pop(0) if queue else pick_port()

    return pick


async def test_services_start_again_on_fresh_ports_when_one_is_taken(
    tmp_path, monkeypatch, squatter
):
    monkeypatch.setattr(demo_stack, "pick_port", _picks([squatter]))
    stack = DemoStack(tmp_path / "demo")
    stack.workdir.mkdir(parents=True)
    stack.llm_port = pick_port()  # no model server is needed to serve
    stack.write_policy()
    try:
        addrs = await stack.start_services()
        assert f"127.0.0.1:{squatter}" not in addrs.values()
        for addr in addrs.values():
            assert await is_serving(addr)
        assert len(stack.children) == 2, "one lost start, one that serves"
        assert stack.children[0].proc.returncode not in (None, 0)
        log = (stack.workdir / "services.log").read_text()
        assert f"port {squatter} is already in use" in log
    finally:
        await stack.stop()


async def test_a_port_lost_on_every_try_is_reported_as_such(tmp_path, monkeypatch, squatter):
    monkeypatch.setattr(demo_stack, "pick_port", lambda: squatter)
    stack = DemoStack(tmp_path / "demo")
    stack.workdir.mkdir(parents=True)
    stack.llm_port = squatter
    stack.policy_path.write_text(DEMO_POLICY.read_text(encoding="utf-8"))
    try:
        with pytest.raises(PortLost, match="already in use"):
            await stack.start_services()
        assert len(stack.children) == demo_stack.START_TRIES
    finally:
        await stack.stop()
