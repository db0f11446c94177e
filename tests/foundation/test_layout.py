"""The layout rule, enforced on the source (every import statement, nested
ones included, read from the AST):

services/ holds what runs inside a server process, clients/ what runs on the
caller's side. A service package imports its own modules, the shared server
packages, the contract and the typed clients of the services it calls; never
another service's internals, its own typed client (that is the caller's half
of it), nor anything else caller-side. The typed clients and the contract, which
servers import, stay free of both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES_ROOT = REPO / "services" / "speckit_reflex"
CLIENTS_ROOT = REPO / "clients" / "speckit_reflex"

# What runs inside a server process.
SERVICES = frozenset({"capsule", "inference", "patchloop", "router", "openai_gateway"})
SHARED = frozenset({"runtime", "policy", "errors"})
# Beside the generated stubs, imported by both sides.
CONTRACT = frozenset({"contract", "v1"})
TYPED_CLIENTS = "clients"
# Caller-side only.
CALLER_SIDE = frozenset({"cli", "bakeoff", "demo"})
# Top-level modules of the checkout that are never part of a server.
NOT_PACKAGE = frozenset({"examples", "agent_client", "bench", "tests", "compose", "scripts"})


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "v1" not in p.relative_to(root).parts)


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in `path`, relative ones resolved,
    `from speckit_reflex import x` read as speckit_reflex.x."""
    package = ["speckit_reflex", *path.relative_to(root).parent.parts]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "speckit_reflex":
                out.extend((node.lineno, f"speckit_reflex.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, base))
    return out


def _part(module: str) -> str | None:
    """The package of speckit_reflex a module belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] in NOT_PACKAGE:
        return parts[0]
    if parts[0] != "speckit_reflex" or len(parts) < 2:
        return None
    return parts[1]


def _server_violations(root: Path) -> list[str]:
    bad: list[str] = []
    for path in _modules(root):
        rel = path.relative_to(root)
        own = rel.parts[0].removesuffix(".py")
        for line, module in _imports(path, root):
            part = _part(module)
            if part is None or part == own:
                continue
            where = f"{rel}:{line} imports {module}"
            if part in CALLER_SIDE or part in NOT_PACKAGE:
                bad.append(f"{where}: caller-side code in a server")
            elif part in SERVICES:
                bad.append(f"{where}: another service's internals (use its typed client)")
            elif part == TYPED_CLIENTS and module.split(".")[2:3] == [own]:
                bad.append(f"{where}: its own typed client is caller-side code")
            elif part not in SHARED | CONTRACT | {TYPED_CLIENTS}:
                bad.append(f"{where}: {part} is in no layer of the layout rule")
    return bad


def test_servers_import_no_caller_side_code_and_no_other_service():
    assert _server_violations(SERVICES_ROOT) == []


def test_typed_clients_and_contract_import_only_the_contract():
    bad = []
    for path in [*_modules(CLIENTS_ROOT / TYPED_CLIENTS), CLIENTS_ROOT / "contract.py"]:
        for line, module in _imports(path, CLIENTS_ROOT):
            part = _part(module)
            if part is not None and part not in CONTRACT | {TYPED_CLIENTS}:
                bad.append(f"{path.relative_to(CLIENTS_ROOT)}:{line} imports {module}")
    assert bad == []


def test_every_package_has_a_layer_and_states_the_rule():
    server_side = {p.name.removesuffix(".py") for p in SERVICES_ROOT.iterdir()} - {"__pycache__"}
    caller_side = {p.name.removesuffix(".py") for p in CLIENTS_ROOT.iterdir()} - {"__pycache__"}
    assert server_side == SERVICES | SHARED
    assert caller_side == CALLER_SIDE | CONTRACT | {TYPED_CLIENTS}
    # PEP 420: the import root is shared by both folders, so neither has an __init__.
    assert not (SERVICES_ROOT / "__init__.py").exists()
    assert not (CLIENTS_ROOT / "__init__.py").exists()
    for init in sorted([*SERVICES_ROOT.glob("*/__init__.py"), *CLIENTS_ROOT.glob("*/__init__.py")]):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert doc.startswith("Layout rule: services/ holds what runs inside a server process"), (
            init
        )


@pytest.mark.parametrize(
    ("module", "line", "why"),
    [
        (
            "capsule/report.py",
            "from speckit_reflex.cli.output import print_json",
            "caller-side code in a server",
        ),
        (
            "router/engine.py",
            "from speckit_reflex.capsule.thresholds import judge",
            "another service's internals",
        ),
        ("runtime/logs.py", "from ..bakeoff import trial", "caller-side code in a server"),
        (
            "patchloop/core.py",
            "    import speckit_reflex.inference.core",
            "another service's internals",
        ),
        ("policy/model.py", "from speckit_reflex import demo", "caller-side code in a server"),
        (
            "capsule/report.py",
            "from speckit_reflex.clients.capsule import window",
            "its own typed client",
        ),
    ],
)
def test_the_check_catches_a_forbidden_import(tmp_path: Path, module: str, line: str, why: str):
    """A copy of services/ with one forbidden import put back fails the check."""
    copy = tmp_path / "speckit_reflex"
    for path in _modules(SERVICES_ROOT):
        target = copy / path.relative_to(SERVICES_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    source = copy / module
    text = source.read_text(encoding="utf-8")
    if line.startswith(" "):  # nested: inside a function
        text += f"\n\ndef _late() -> None:\n{line}\n"
    else:
        text += f"\n{line}\n"
    source.write_text(text, encoding="utf-8")
    bad = _server_violations(copy)
    assert len(bad) == 1 and bad[0].startswith(module), bad
    assert why in bad[0], bad
