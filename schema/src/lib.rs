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

/// Whether a producer built from one schema (`old_input`, `old_output`) and workers built from
/// another (`new_input`, `new_output`) understand each other's messages, in the binary and the
/// JSON encoding: the same input and output messages, and every field number that both sides
/// know has the same name, type and cardinality on both (fields only one side knows are
/// skipped by the other), every enum value number both know the same name. `Err` says the
/// first difference that breaks them.
pub fn compatible(
    old_input: &MessageDescriptor,
    old_output: &MessageDescriptor,
    new_input: &MessageDescriptor,
    new_output: &MessageDescriptor,
) -> Result<(), String> {
    for (what, old, new) in [
        ("input", old_input, new_input),
        ("output", old_output, new_output),
    ] {
        if old.full_name() != new.full_name() {
            return Err(format!(
                "the {what} message is {} for the producer and {} for the workers",
                old.full_name(),
                new.full_name()
            ));
        }
    }
    let (mut old_messages, mut old_enums) = (BTreeMap::new(), BTreeMap::new());
    collect(old_input, &mut old_messages, &mut old_enums);
    collect(old_output, &mut old_messages, &mut old_enums);
    let (mut new_messages, mut new_enums) = (BTreeMap::new(), BTreeMap::new());
    collect(new_input, &mut new_messages, &mut new_enums);
    collect(new_output, &mut new_messages, &mut new_enums);
    for (name, old) in &old_messages {
        let Some(new) = new_messages.get(name) else {
            continue;
        };
        let fields = |m: &MessageDescriptor| -> BTreeMap<i32, String> {
            m.descriptor_proto()
                .field
                .iter()
                .map(|f| {
                    let mut shape = format!(
                        "{} {} {}",
                        f.name(),
                        f.label().as_str_name(),
                        f.r#type().as_str_name()
                    );
                    if !f.type_name().is_empty() {
                        shape.push(' ');
                        shape.push_str(f.type_name().trim_start_matches('.'));
                    }
                    (f.number(), shape)
                })
                .collect()
        };
        let new_fields = fields(new);
        for (number, old_shape) in fields(old) {
            if let Some(new_shape) = new_fields.get(&number)
                && *new_shape != old_shape
            {
                return Err(format!(
                    "field {number} of {name} is `{old_shape}` for the producer and `{new_shape}` for the workers"
                ));
            }
        }
    }
    for (name, old) in &old_enums {
        let Some(new) = new_enums.get(name) else {
            continue;
        };
        for value in old.values() {
            if let Some(other) = new.get_value(value.number())
                && other.name() != value.name()
            {
                return Err(format!(
                    "value {} of {name} is {} for the producer and {} for the workers",
                    value.number(),
                    value.name(),
                    other.name()
                ));
            }
        }
    }
    Ok(())
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

    fn pair(source: &str) -> (MessageDescriptor, MessageDescriptor) {
        let dir = std::env::temp_dir().join(format!(
            "taskwire-schema-{}-{:x}",
            std::process::id(),
            Sha256::digest(source.as_bytes())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("demo.proto"), source).expect("proto written");
        let files = protox::compile(["demo.proto"], [&dir]).expect("demo.proto compiles");
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(files)
            .expect("descriptors load");
        (
            pool.get_message_by_name("demo.In").expect("demo.In"),
            pool.get_message_by_name("demo.Out").expect("demo.Out"),
        )
    }

    #[test]
    fn added_fields_are_compatible_and_changed_ones_are_not() {
        let base = "syntax = \"proto3\"; package demo; enum Mode { MODE_UNSPECIFIED = 0; MODE_FAST = 1; } message In { string text = 1; Mode mode = 2; } message Out { int64 n = 1; }";
        let (old_in, old_out) = pair(base);
        let added = base.replace("Mode mode = 2;", "Mode mode = 2; repeated string tags = 3;");
        let (new_in, new_out) = pair(&added);
        assert_eq!(compatible(&old_in, &old_out, &new_in, &new_out), Ok(()));
        assert_eq!(compatible(&new_in, &new_out, &old_in, &old_out), Ok(()));
        assert_ne!(
            descriptor_hash(&old_in, &old_out),
            descriptor_hash(&new_in, &new_out)
        );
        for (changed, says) in [
            (
                base.replace("string text = 1", "int64 text = 1"),
                "field 1 of demo.In",
            ),
            (
                base.replace("string text = 1", "string words = 1"),
                "field 1 of demo.In",
            ),
            (
                base.replace("string text = 1", "repeated string text = 1"),
                "field 1 of demo.In",
            ),
            (
                base.replace("MODE_FAST = 1", "MODE_SLOW = 1"),
                "value 1 of demo.Mode",
            ),
            (
                base.replace("int64 n = 1", "int32 n = 1"),
                "field 1 of demo.Out",
            ),
        ] {
            let (new_in, new_out) = pair(&changed);
            let err = compatible(&old_in, &old_out, &new_in, &new_out).expect_err(&changed);
            assert!(err.contains(says), "{err:?} should say {says:?}");
        }
        let (new_in, new_out) =
            pair(&base.replace("message Out {", "message Other {}\nmessage Out {"));
        assert_eq!(compatible(&old_in, &old_out, &new_in, &new_out), Ok(()));
        let err = compatible(&old_in, &old_out, &new_out, &new_in).expect_err("swapped");
        assert!(err.contains("the input message is demo.In"), "{err}");
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
