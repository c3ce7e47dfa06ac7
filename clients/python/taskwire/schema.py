"""The schema fingerprint of a task (docs/protocol.md, "Schema fingerprints"): the same
SHA-256 the Rust runtime computes, so that a producer and workers built from different versions
of a proto are told apart at Submit."""

import hashlib
from typing import Dict

from google.protobuf import descriptor_pb2

_Label = descriptor_pb2.FieldDescriptorProto.Label
_Type = descriptor_pb2.FieldDescriptorProto.Type


def canonical_text(input_descriptor, output_descriptor) -> str:
    """The text the fingerprint is the hash of."""
    messages: Dict[str, object] = {}
    enums: Dict[str, object] = {}

    def collect(message) -> None:
        if message.full_name in messages:
            return
        messages[message.full_name] = message
        for field in message.fields:
            if field.message_type is not None:
                collect(field.message_type)
            elif field.enum_type is not None:
                enums[field.enum_type.full_name] = field.enum_type

    collect(input_descriptor)
    collect(output_descriptor)
    lines = [f"input {input_descriptor.full_name}", f"output {output_descriptor.full_name}"]
    for name in sorted(messages):
        proto = descriptor_pb2.DescriptorProto()
        messages[name].CopyToProto(proto)
        lines.append(f"message {name}")
        for field in sorted(proto.field, key=lambda f: f.number):
            line = f"field {field.number} {field.name} {_Label.Name(field.label)} {_Type.Name(field.type)}"
            if field.type_name:
                line += " " + field.type_name.lstrip(".")
            lines.append(line)
    for name in sorted(enums):
        lines.append(f"enum {name}")
        for number, value in sorted((v.number, v.name) for v in enums[name].values):
            lines.append(f"value {number} {value}")
    return "".join(line + "\n" for line in lines)


def descriptor_hash(input_descriptor, output_descriptor) -> str:
    """Lower-case hex SHA-256 of the canonical text."""
    return hashlib.sha256(canonical_text(input_descriptor, output_descriptor).encode()).hexdigest()
