"""Engine round trips on every FULL section of s1.bin and of every fixture (real QEMU 7.2 data).

For each device section the decoder delivers, the schema built from the stream's description
(or the manifest's ``desc_from`` description) must decode the payload completely and encode the
values back to the identical bytes; the description JSON must come out unchanged.
"""

from __future__ import annotations

import copy

import pytest
from vmstate_streams import S1, decoded, stream_names

from vmig.errors import SchemaError
from vmig.stream.vmdesc import VmDescription
from vmig.testing import fixtures
from vmig.vmstate.engine import SchemaSet


@pytest.mark.parametrize("name", stream_names())
def test_every_full_section_round_trips(name: str) -> None:
    d = decoded(name)
    states = d.device_states()
    assert states, f"{name}: no device sections decoded"
    descs = d.descriptions()
    before = [copy.deepcopy(desc.root.to_dict()) for desc in descs]
    with_codecs = {id(desc.root): SchemaSet(desc.root) for desc in descs}
    plain = {id(desc.root): SchemaSet(desc.root, registry=None) for desc in descs}
    for ev in states:
        owner = next((x for x in descs if x.device(ev.idstr, ev.instance_id) is not None), None)
        assert owner is not None, f"{name}: {ev.idstr} {ev.instance_id} not described"
        entry = owner.device(ev.idstr, ev.instance_id)
        payload = bytes(ev.payload)
        assert VmDescription.payload_length(entry) == len(payload)
        for sets in (with_codecs, plain):
            schema = sets[id(owner.root)].build(entry)
            values = schema.decode(payload, offset=ev.offset)
            assert schema.encode(values) == payload, f"{name}: {ev.idstr} not byte-identical"
            # a deep copy of the values encodes the same (the schema keeps no parse state)
            assert schema.encode(copy.deepcopy(values)) == payload
    assert [desc.root.to_dict() for desc in descs] == before, "description mutated"


def test_s1_has_the_31_full_sections_of_the_spec() -> None:
    # spec stream-format §7 lists 31 FULL sections (timer ... globalstate)
    states = decoded(S1).device_states()
    assert len(states) == 31
    assert states[0].idstr == "timer" and states[-1].idstr == "globalstate"
    assert states[0].offset == 0x1515B7 + 1 + 4 + 1 + 5 + 4 + 4


def test_schema_cache_is_per_description_object() -> None:
    d = decoded(S1)
    entry = d.own.device("cpu", 0)
    a = SchemaSet(d.own.root)
    b = SchemaSet(d.own.root)
    assert a.build(entry) is a.build(entry)
    assert a.for_section("cpu", 0) is a.build(entry)
    assert a.build(entry) is not b.build(entry)
    # identical structs in different entries are different JSON objects: no cross-talk
    i440 = a.for_section("0000:00:00.0/I440FX", 0)
    piix = a.for_section("0000:00:01.0/PIIX3", 0)
    assert i440.body.items[0].body is not piix.body.items[0].body


def test_codec_and_plain_schemas_agree_on_every_other_field() -> None:
    d = decoded(S1)
    ev = next(e for e in d.device_states() if e.idstr.endswith("/virtio-mem"))
    entry = d.entry_for(ev)
    with_codec = SchemaSet(d.own.root).build(entry)
    plain = SchemaSet(d.own.root, registry=None).build(entry)
    v_plain = plain.decode(ev.payload)
    assert v_plain["virtio"] == bytes(ev.payload)
    if with_codec.body.items[0].codec:
        v = with_codec.decode(ev.payload)
        assert not isinstance(v["virtio"], bytes)
        assert with_codec.encode(v) == bytes(ev.payload)


@pytest.mark.parametrize("name", stream_names())
def test_bundled_schema_sets_agree_with_the_trailer(name: str) -> None:
    # vmig's bundled machine schema sets (used when a stream has no trailer) must give the
    # same values as the stream's own description wherever one of their variants fits, and
    # encode back byte-identically
    from vmig.stream.events import Configuration
    from vmig.vmstate.machines import load_schema_set

    d = decoded(name)
    machine = next((ev.name for ev in d.events if isinstance(ev, Configuration)), None)
    if machine is None:  # send-configuration=off: the stream does not name it, the manifest does
        machine = fixtures.manifest(name)["machine"]
    bundled = load_schema_set(machine)
    assert bundled is not None, machine
    assert d.descriptions(), f"{name}: no description (own trailer or manifest desc_from)"
    loose = SchemaSet(registry=None, optional_subsections=True)
    strict = {id(x.root): SchemaSet(x.root, registry=None) for x in d.descriptions()}
    matched = 0
    for ev in d.device_states():
        payload = bytes(ev.payload)
        owner = next(x for x in d.descriptions() if x.device(ev.idstr, ev.instance_id) is not None)
        reference = strict[id(owner.root)].for_section(ev.idstr, ev.instance_id).decode(payload)
        for variant in bundled.variants(ev.idstr):
            try:
                schema = loose.build(variant)
                values = schema.decode(payload)
            except SchemaError:
                continue
            assert schema.encode(values) == payload
            if not ev.idstr.endswith("/virtio-mem"):
                assert values == reference, f"{name}: {ev.idstr}"
            matched += 1
            break
    assert matched > 0
