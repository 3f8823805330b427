"""The schema engine on description values of the wrong type (a trailer is untrusted input):
a SchemaError, never a TypeError or an AttributeError."""

from __future__ import annotations

import pytest

from vmig.errors import SchemaError
from vmig.stream.vmdesc import parse_json
from vmig.vmstate.engine import SchemaSet


@pytest.mark.parametrize("entry", [
    b'{"vmsd_name": "t", "fields": [], "subsections": 1.5}',
    b'{"vmsd_name": "t", "fields": [], "subsections": {"a": 1}}',
    b'{"vmsd_name": "t", "fields": [], "version": {}}',
    b'{"vmsd_name": "t", "fields": [], "version": -1}',
])
def test_body_with_values_of_the_wrong_type(entry) -> None:
    with pytest.raises(SchemaError):
        SchemaSet(None).build(parse_json(entry))


@pytest.mark.parametrize("doc", [b'[["devices", []]]', b'{"devices": 5}', b'{"devices": {"a": 1}}', b"7"])
def test_description_that_is_not_an_object_with_a_devices_list(doc) -> None:
    with pytest.raises(SchemaError, match="not an object with a 'devices' list"):
        SchemaSet(parse_json(doc))
