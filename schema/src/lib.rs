//! The fingerprint of a task's schema: what a producer and the workers must agree on.
//!
//! Both sides compute it from their own descriptors, so that a producer built from one version
//! of a proto and workers built from another are told apart at Submit. It covers what the binary
//! and JSON encodings of the task's input and output depend on, and nothing else (comments,
//! options and file layout may change freely):
//!
//! ```text
//! input <full name of the input message>
//! output <full name of the output message>
//! message <full name>                      one per message reachable from both, by name
//! field <number> <name> <label> <type>[ <type name>]   one per field, by number
//! enum <full name>                         one per enum reachable from both, by name
//! value <number> <name>                    one per value, by number, then name
//! ```
//!
//! each line ending in `\n`; labels and types are `FieldDescriptorProto` enum names
//! (`LABEL_OPTIONAL`, `TYPE_INT64`), type names are full names without the leading dot. The
//! fingerprint is the lower-case hex SHA-256 of that text. `docs/protocol.md` states the same
//! for other runtimes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor};
use sha2::{Digest as _, Sha256};

/// The schema fingerprint of a task with these input and output messages.
pub fn descriptor_hash(input: &MessageDescriptor, output: &MessageDescriptor) -> String {
    let text = canonical_text(input, output);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The schema fingerprint of `task` (`package.Service/Method`) in an encoded
/// `FileDescriptorSet`; `None` when the set does not describe it.
pub fn task_hash(file_descriptor_set: &[u8], task: &str) -> Option<String> {
    let pool = prost_reflect::DescriptorPool::decode(file_descriptor_set).ok()?;
    let (service, method) = task.split_once('/')?;
    let method = pool
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)?;
    Some(descriptor_hash(&method.input(), &method.output()))
}

/// The text the fingerprint is the hash of (see the module's documentation).
pub fn canonical_text(input: &MessageDescriptor, output: &MessageDescriptor) -> String {
    let mut messages = BTreeMap::new();
    let mut enums = BTreeMap::new();
    collect(input, &mut messages, &mut enums);
    collect(output, &mut messages, &mut enums);
    let mut text = format!(
        "input {}\noutput {}\n",
        input.full_name(),
        output.full_name()
    );
    for message in messages.values() {
        let _ = writeln!(text, "message {}", message.full_name());
        let mut fields: Vec<_> = message.descriptor_proto().field.iter().collect();
        fields.sort_by_key(|f| f.number());
        for field in fields {
            let _ = write!(
                text,
                "field {} {} {} {}",
                field.number(),
                field.name(),
                field.label().as_str_name(),
                field.r#type().as_str_name()
            );
            if !field.type_name().is_empty() {
                let _ = write!(text, " {}", field.type_name().trim_start_matches('.'));
            }
            text.push('\n');
        }
    }
    for descriptor in enums.values() {
        let _ = writeln!(text, "enum {}", descriptor.full_name());
        let mut values: Vec<_> = descriptor
            .values()
            .map(|v| (v.number(), v.name().to_owned()))
            .collect();
        values.sort();
        for (number, name) in values {
            let _ = writeln!(text, "value {number} {name}");
        }
    }
    text
}

fn collect(
    message: &MessageDescriptor,
    messages: &mut BTreeMap<String, MessageDescriptor>,
    enums: &mut BTreeMap<String, EnumDescriptor>,
) {
    if messages
        .insert(message.full_name().to_owned(), message.clone())
        .is_some()
    {
        return;
    }
    for field in message.fields() {
        match field.kind() {
            Kind::Message(inner) => collect(&inner, messages, enums),
            Kind::Enum(inner) => {
                enums.insert(inner.full_name().to_owned(), inner);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magic() -> (MessageDescriptor, MessageDescriptor) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
        let files = protox::compile(["examples/magic/v1/magic.proto"], [root])
            .expect("magic.proto compiles");
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(files)
            .expect("descriptors load");
        (
            pool.get_message_by_name("examples.magic.v1.AddArgs")
                .expect("examples.magic.v1.AddArgs"),
            pool.get_message_by_name("examples.magic.v1.AddResult")
                .expect("examples.magic.v1.AddResult"),
        )
    }

    #[test]
    fn the_text_lists_every_field_by_number() {
        let (input, output) = magic();
        assert_eq!(
            canonical_text(&input, &output),
            "input examples.magic.v1.AddArgs\noutput examples.magic.v1.AddResult\n\
             message examples.magic.v1.AddArgs\n\
             field 1 arg1 LABEL_OPTIONAL TYPE_INT64\n\
             field 2 arg2 LABEL_OPTIONAL TYPE_INT64\n\
             field 3 arg3 LABEL_OPTIONAL TYPE_INT64\n\
             message examples.magic.v1.AddResult\n\
             field 1 sum LABEL_OPTIONAL TYPE_INT64\n"
        );
        let hash = descriptor_hash(&input, &output);
        assert_eq!(hash.len(), 64);
        assert_ne!(hash, descriptor_hash(&output, &input));
    }
}
