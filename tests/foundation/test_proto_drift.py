"""Generated code under clients/ must match a fresh generation from protos/."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_protos() -> None:
    assert _gen_module().drift() == []


def test_drift_is_detected_when_a_generated_file_is_edited(tmp_path: Path) -> None:
    gen = _gen_module()
    copy = tmp_path / "clients"
    shutil.copytree(ROOT / "clients", copy)
    target = copy / "speckit_reflex" / "v1" / "router_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    assert gen.drift(copy) == ["differs: router_pb2.py"]
    (copy / "speckit_reflex" / "v1" / "capsule_pb2.pyi").unlink()
    assert "missing: capsule_pb2.pyi" in gen.drift(copy)


def test_every_service_of_the_sketch_is_in_the_contracts() -> None:
    from speckit_reflex.v1 import capsule_pb2, inference_pb2, patchloop_pb2, router_pb2

    methods = {
        "Router": (router_pb2, {"Decide", "GetPolicy"}),
        "Inference": (inference_pb2, {"ListModels", "Health", "Complete", "StreamComplete"}),
        "PatchLoop": (patchloop_pb2, {"Run", "GetRun"}),
        "Capsule": (
            capsule_pb2,
            {"AppendEvents", "QueryEvents", "GetBakeoffStats", "CheckThresholds", "WriteReport"},
        ),
    }
    for service, (module, wanted) in methods.items():
        desc = module.DESCRIPTOR.services_by_name[service]
        assert desc.full_name == f"speckit_reflex.v1.{service}"
        assert wanted <= {m.name for m in desc.methods}
    assert (
        patchloop_pb2.DESCRIPTOR.services_by_name["PatchLoop"]
        .methods_by_name["Run"]
        .server_streaming
    )
