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

use std::collections::{BTreeMap, BTreeSet};
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
/// another (`new_input`, `new_output`) understand each other, in the binary and the JSON
/// encoding. `Err` says the first difference that breaks them.
///
/// - The input and output messages have the same full names.
/// - What the producer sends, the workers know: every field of every message the producer's
///   input reaches exists on the workers' side with the same name, label, type and type name,
///   and every enum value it can carry exists there with the same number and name. (The workers
///   may know more: fields the producer does not set keep their defaults.)
/// - What the workers answer, the producer reads: every field number of the output's messages
///   that both know has the same shape, and every enum value number both know the same name
///   (fields and values only one side knows are skipped when the producer decodes).
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
    let (mut new_messages, mut new_enums) = (BTreeMap::new(), BTreeMap::new());
    collect(new_input, &mut new_messages, &mut new_enums);
    collect(new_output, &mut new_messages, &mut new_enums);
    // The input: everything the producer knows must be known to the workers.
    let (mut sent, mut sent_enums) = (BTreeMap::new(), BTreeMap::new());
    collect(old_input, &mut sent, &mut sent_enums);
    fits(&sent, &sent_enums, &new_messages, &new_enums, true)?;
    // The output: what both know must agree.
    let (mut read, mut read_enums) = (BTreeMap::new(), BTreeMap::new());
    collect(old_output, &mut read, &mut read_enums);
    fits(&read, &read_enums, &new_messages, &new_enums, false)
}

/// The shape of each field of a message, by number: name, label, type and type name.
fn shapes(message: &MessageDescriptor) -> BTreeMap<i32, String> {
    message
        .descriptor_proto()
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
}

/// Checks the producer's messages and enums against the workers'. With `all`, every field and
/// enum value of the producer's must be on the workers' side; else only those both know must
/// agree.
fn fits(
    old_messages: &BTreeMap<String, MessageDescriptor>,
    old_enums: &BTreeMap<String, EnumDescriptor>,
    new_messages: &BTreeMap<String, MessageDescriptor>,
    new_enums: &BTreeMap<String, EnumDescriptor>,
    all: bool,
) -> Result<(), String> {
    for (name, old) in old_messages {
        let new_fields = new_messages.get(name).map(shapes);
        if all && new_fields.is_none() {
            return Err(format!(
                "the producer sends {name}, which the workers do not know"
            ));
        }
        let new_fields = new_fields.unwrap_or_default();
        for (number, old_shape) in shapes(old) {
            match new_fields.get(&number) {
                Some(new_shape) if *new_shape != old_shape => {
                    return Err(format!(
                        "field {number} of {name} is `{old_shape}` for the producer and `{new_shape}` for the workers"
                    ));
                }
                None if all => {
                    return Err(format!(
                        "field {number} of {name} (`{old_shape}`) is not known to the workers"
                    ));
                }
                _ => {}
            }
        }
    }
    for (name, old) in old_enums {
        let new_values: BTreeSet<(i32, String)> = new_enums
            .get(name)
            .map(|e| {
                e.values()
                    .map(|v| (v.number(), v.name().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for value in old.values() {
            let known_number = new_values.iter().any(|(n, _)| *n == value.number());
            if (all || known_number)
                && !new_values.contains(&(value.number(), value.name().to_owned()))
            {
                return Err(format!(
                    "value {} {} of {name} is not known to the workers under that number and name",
                    value.number(),
                    value.name()
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

/// What is wrong with a task name (`package.Service/Method`, each part a NATS subject token of
/// letters, digits or `_`, at most 200 characters), or `None` when it is a good one: the one
/// rule of task names, for code generation and the runtime alike.
pub fn task_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 200 {
        return Some("longer than 200 characters");
    }
    let Some((service, method)) = name.split_once('/') else {
        return Some("expected `package.Service/Method`, e.g. `examples.magic.v1.Magic/Add`");
    };
    if !service.contains('.') {
        return Some(
            "the service has no package: expected `package.Service/Method` (declare `package name.v1;` in the proto file)",
        );
    }
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !service.split('.').chain([method]).all(token) {
        return Some("each part must be letters, digits or `_` to become a subject token");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_subject_tokens() {
        assert_eq!(task_name_problem("examples.magic.v1.Magic/Add"), None);
        for bad in [
            "Magic/Add",
            "examples.magic.v1.Magic",
            "a.b-c.Magic/Add",
            "a.b..Magic/Add",
            "a.b.Magic/",
            "a.b.Magic/A.dd",
        ] {
            assert!(task_name_problem(bad).is_some(), "{bad}");
        }
        assert!(task_name_problem(&format!("a.{}/Add", "x".repeat(200))).is_some());
    }

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
        // Workers that learnt a field understand producers that do not send it, not the
        // other way round.
        assert_eq!(compatible(&old_in, &old_out, &new_in, &new_out), Ok(()));
        let err = compatible(&new_in, &new_out, &old_in, &old_out).expect_err("removed");
        assert!(err.contains("field 3 of demo.In"), "{err}");
        // In the output it goes both ways: the producer skips what it does not know.
        let more_out = base.replace("int64 n = 1;", "int64 n = 1; string note = 2;");
        let (more_in, more_out) = pair(&more_out);
        assert_eq!(compatible(&old_in, &old_out, &more_in, &more_out), Ok(()));
        assert_eq!(compatible(&more_in, &more_out, &old_in, &old_out), Ok(()));
        // Enum values: the workers must know every one the producer can send; aliases count
        // by name.
        let more_modes = base.replace("MODE_FAST = 1;", "MODE_FAST = 1; MODE_SLOW = 2;");
        let (modes_in, modes_out) = pair(&more_modes);
        assert_eq!(compatible(&old_in, &old_out, &modes_in, &modes_out), Ok(()));
        let err = compatible(&modes_in, &modes_out, &old_in, &old_out).expect_err("value gone");
        assert!(err.contains("value 2 MODE_SLOW of demo.Mode"), "{err}");
        let aliased = base
            .replace("enum Mode {", "enum Mode { option allow_alias = true;")
            .replace("MODE_FAST = 1;", "MODE_FAST = 1; MODE_QUICK = 1;");
        let (alias_in, alias_out) = pair(&aliased);
        assert_eq!(
            compatible(&alias_in, &alias_out, &alias_in, &alias_out),
            Ok(())
        );
        assert_eq!(compatible(&old_in, &old_out, &alias_in, &alias_out), Ok(()));
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
                "value 1 MODE_FAST of demo.Mode",
            ),
            (
                base.replace("string text = 1", "string text = 4"),
                "field 1 of demo.In",
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
