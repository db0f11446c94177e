"""The hand-written half of the contract (speckit_reflex.contract): short enum
names for every enum of v1, and the defaults both sides share."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from speckit_reflex import contract
from speckit_reflex.clients.channel import ChannelConfig
from speckit_reflex.runtime.settings import RuntimeSettings
from speckit_reflex.v1 import (
    capsule_pb2,
    common_pb2,
    inference_pb2,
    patchloop_pb2,
    router_pb2,
)


def _all_enums() -> list[EnumDescriptor]:
    out: list[EnumDescriptor] = []
    for module in (capsule_pb2, common_pb2, inference_pb2, patchloop_pb2, router_pb2):
        out.extend(module.DESCRIPTOR.enum_types_by_name.values())
        for msg in module.DESCRIPTOR.message_types_by_name.values():
            out.extend(msg.enum_types)
    return out


def test_every_enum_value_carries_the_prefix_the_short_names_strip():
    enums = _all_enums()
    assert len(enums) >= 8, [e.name for e in enums]
    for desc in enums:
        enum = EnumTypeWrapper(desc)  # what the generated modules hold, e.g. common_pb2.RoutingMode
        prefix = contract.enum_prefix(enum)
        bad = [v.name for v in desc.values if not v.name.startswith(prefix)]
        assert not bad, f"{desc.full_name}: values without the prefix {prefix}: {bad}"
        names = contract.enum_names(enum)
        assert len(set(names.values())) == len(desc.values), names


def test_short_names_of_known_and_unknown_values():
    assert contract.enum_name(common_pb2.RoutingMode, common_pb2.ROUTING_MODE_REFLEX) == "reflex"
    assert (
        contract.enum_name(
            capsule_pb2.ThresholdFailureKind, capsule_pb2.THRESHOLD_FAILURE_KIND_TOO_FEW_SAMPLES
        )
        == "too_few_samples"
    )
    assert contract.enum_name(patchloop_pb2.FixSource, patchloop_pb2.FIX_SOURCE_COMPILER) == (
        "compiler"
    )
    # A newer peer's value is shown as its number, not an exception.
    assert contract.enum_name(common_pb2.RoutingMode, 999) == "999"
    roles = contract.enum_names(common_pb2.Role, unspecified=False)
    assert 0 not in roles and roles[common_pb2.ROLE_IMPLEMENTER] == "implementer"


def test_servers_and_clients_default_to_the_same_addresses(monkeypatch):
    for service in contract.DEFAULT_ADDRS:
        monkeypatch.delenv(f"SPECKIT_{service.upper()}_ADDR", raising=False)
    settings = RuntimeSettings()
    for service, addr in contract.DEFAULT_ADDRS.items():
        assert settings.addr_of(service) == addr
        assert ChannelConfig.from_env(service, environ={}).address == addr


def test_percentile_interpolates_between_ranked_values():
    assert contract.percentile([], 0.5) is None
    assert contract.percentile([10.0], 0.95) == 10.0
    assert contract.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert contract.percentile([0.0, 100.0], 0.95) == 95.0
