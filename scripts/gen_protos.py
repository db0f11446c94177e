"""Regenerate the Python gRPC code under clients/ from protos/.

The one way generated code is made: grpcio-tools for messages and stubs,
mypy-protobuf for the .pyi type stubs, both pinned in pyproject's dev extra.
The drift test (tests/test_proto_drift.py) calls generate() into a temporary
folder and fails on any difference from what is committed.

    python scripts/gen_protos.py            # rewrite clients/speckit_reflex/v1
    python scripts/gen_protos.py --check    # exit 1 if committed code drifted
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients"
PACKAGE_DIR = Path("speckit_reflex") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Generate code for every proto into out_root/speckit_reflex/v1; return the files."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins sit beside this interpreter; name them so the
    # script works without an activated virtual environment.
    bindir = Path(sys.executable).parent
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return generated_files(out_root)


def generated_files(out_root: Path) -> list[Path]:
    folder = out_root / PACKAGE_DIR
    return sorted(p for p in folder.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def drift(committed_root: Path = OUT_ROOT) -> list[str]:
    """Names of generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in generated_files(committed_root)}
        problems = []
        for name in sorted(fresh.keys() | committed.keys()):
            if name not in committed:
                problems.append(f"missing: {name}")
            elif name not in fresh:
                problems.append(f"stale (no proto makes it): {name}")
            elif not filecmp.cmp(fresh[name], committed[name], shallow=False):
                problems.append(f"differs: {name}")
        return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    opts = parser.parse_args()
    if opts.check:
        problems = drift()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    folder = OUT_ROOT / PACKAGE_DIR
    for old in generated_files(OUT_ROOT) if folder.exists() else []:
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copy2(path, folder / path.name)
    print(f"generated {len(generated_files(OUT_ROOT))} files in {folder.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
