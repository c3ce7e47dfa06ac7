//! Checks task arguments against the task's input message before anything reaches NATS.

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the arguments are {size} bytes; the limit is {limit} bytes (TASKWIRE_MAX_PAYLOAD)")]
    TooLarge { size: usize, limit: usize },
    #[error("the arguments do not decode as {message}: {reason}")]
    Undecodable { message: String, reason: String },
    #[error("the arguments carry field number {number}, which {message} does not have")]
    UnknownFieldNumber { message: String, number: u32 },
    #[error("the arguments are not JSON: {0}")]
    NotJson(String),
    #[error("the JSON arguments must be an object with the fields of {0}")]
    NotObject(String),
    #[error("{message} has no field `{field}`; its fields are: {known}")]
    UnknownField {
        message: String,
        field: String,
        known: String,
    },
    #[error("field `{field}` of {message}: {reason}")]
    BadField {
        message: String,
        field: String,
        reason: String,
    },
}

/// Checks protobuf-encoded arguments and passes them through unchanged.
pub fn from_proto(
    input: &MessageDescriptor,
    args: Bytes,
    limit: usize,
) -> Result<(Bytes, DynamicMessage), PayloadError> {
    if args.len() > limit {
        return Err(PayloadError::TooLarge {
            size: args.len(),
            limit,
        });
    }
    let message = DynamicMessage::decode(input.clone(), args.clone()).map_err(|e| {
        PayloadError::Undecodable {
            message: input.full_name().to_owned(),
            reason: e.to_string(),
        }
    })?;
    if let Some(field) = message.unknown_fields().next() {
        return Err(PayloadError::UnknownFieldNumber {
            message: input.full_name().to_owned(),
            number: field.number(),
        });
    }
    Ok((args, message))
}

/// Parses proto3 JSON arguments and encodes them as protobuf. Unknown and mistyped fields are
/// named in the error.
pub fn from_json(
    input: &MessageDescriptor,
    json: &str,
    limit: usize,
) -> Result<(Bytes, DynamicMessage), PayloadError> {
    if json.len() > limit.saturating_mul(4) {
        return Err(PayloadError::TooLarge {
            size: json.len(),
            limit,
        });
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut de = serde_json::Deserializer::from_str(json);
    let parsed = DynamicMessage::deserialize_with_options(input.clone(), &mut de, &options)
        .and_then(|m| de.end().map(|()| m));
    let message = match parsed {
        Ok(message) => message,
        Err(err) => return Err(explain(input, json, err)),
    };
    let encoded = message.encode_to_vec();
    if encoded.len() > limit {
        return Err(PayloadError::TooLarge {
            size: encoded.len(),
            limit,
        });
    }
    Ok((encoded.into(), message))
}

/// Finds the field a JSON document went wrong in, by trying its fields one at a time.
fn explain(input: &MessageDescriptor, json: &str, err: serde_json::Error) -> PayloadError {
    let message = input.full_name().to_owned();
    let value: serde_json::Value = match serde_json::from_str(json) {
        Ok(value) => value,
        Err(e) => return PayloadError::NotJson(e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return PayloadError::NotObject(message);
    };
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    for (key, value) in object {
        let known = input
            .get_field_by_json_name(key)
            .or_else(|| input.get_field_by_name(key));
        if known.is_none() {
            let fields: Vec<String> = input.fields().map(|f| f.json_name().to_owned()).collect();
            return PayloadError::UnknownField {
                message,
                field: key.clone(),
                known: fields.join(", "),
            };
        }
        let single = serde_json::json!({ key: value });
        if let Err(e) = DynamicMessage::deserialize_with_options(input.clone(), single, &options) {
            return PayloadError::BadField {
                message,
                field: key.clone(),
                reason: e.to_string(),
            };
        }
    }
    PayloadError::Undecodable {
        message,
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskwire::task::TaskType;

    fn add_args() -> MessageDescriptor {
        TaskType::all_in(taskwire_examples::FILE_DESCRIPTOR_SET)
            .expect("descriptors")
            .into_iter()
            .find(|t| t.name.as_str() == "examples.magic.v1.Magic/Add")
            .expect("Magic/Add")
            .input
    }

    #[test]
    fn json_becomes_protobuf() {
        let (bytes, _) =
            from_json(&add_args(), r#"{"arg1":1,"arg2":"2","arg3":3}"#, 1000).expect("valid");
        let args = taskwire_examples::magic::v1::AddArgs::decode(bytes).expect("decodes");
        assert_eq!((args.arg1, args.arg2, args.arg3), (1, 2, 3));
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let err = from_json(&add_args(), r#"{"arg1":1,"arg4":2}"#, 1000).expect_err("unknown");
        assert!(
            matches!(&err, PayloadError::UnknownField { field, .. } if field == "arg4"),
            "{err}"
        );
        assert!(err.to_string().contains("arg1, arg2, arg3"), "{err}");
        let err = from_json(&add_args(), r#"{"arg1":1,"arg2":"two"}"#, 1000).expect_err("mistyped");
        assert!(
            matches!(&err, PayloadError::BadField { field, .. } if field == "arg2"),
            "{err}"
        );
        let err = from_json(&add_args(), r#"[1,2]"#, 1000).expect_err("not an object");
        assert!(matches!(err, PayloadError::NotObject(_)), "{err}");
        let err = from_json(&add_args(), r#"{"arg1":"#, 1000).expect_err("not json");
        assert!(matches!(err, PayloadError::NotJson(_)), "{err}");
    }

    #[test]
    fn bad_protobuf_is_refused() {
        let err =
            from_proto(&add_args(), Bytes::from_static(&[0x08]), 1000).expect_err("truncated");
        assert!(matches!(err, PayloadError::Undecodable { .. }), "{err}");
        // Field 9, varint 1: not a field of AddArgs.
        let err =
            from_proto(&add_args(), Bytes::from_static(&[0x48, 0x01]), 1000).expect_err("unknown");
        assert!(
            matches!(err, PayloadError::UnknownFieldNumber { number: 9, .. }),
            "{err}"
        );
        let err = from_proto(&add_args(), Bytes::from(vec![0u8; 2000]), 1000).expect_err("large");
        assert!(
            matches!(err, PayloadError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
    }
}
