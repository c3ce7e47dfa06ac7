//! What an upstream serves, learnt from its standard gRPC server reflection
//! (`grpc.reflection.v1.ServerReflection`, which grpcio-reflection, @grpc/reflection and
//! tonic-reflection all serve).

use std::collections::BTreeSet;

use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use super::files::Files;

/// Why a question to the upstream's reflection got no answer.
#[derive(Debug)]
pub(crate) struct Unanswered {
    /// The upstream answers but serves no reflection: asking again cannot help.
    pub(crate) not_served: bool,
    pub(crate) reason: String,
}

impl From<String> for Unanswered {
    fn from(reason: String) -> Self {
        Self {
            not_served: false,
            reason,
        }
    }
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The services an upstream lists, less the ones every gRPC server may carry besides its own
/// (health, reflection).
pub(crate) async fn services(channel: &Channel) -> Result<Vec<String>, Unanswered> {
    match ask(channel, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => Ok(list
            .service
            .into_iter()
            .map(|s| s.name)
            .filter(|name| !name.starts_with("grpc."))
            .collect()),
        other => Err(unexpected(&other).into()),
    }
}

/// A descriptor set with the files that define `services` and every file they import.
pub(crate) async fn descriptor_set(
    channel: &Channel,
    services: &[String],
) -> Result<Vec<u8>, Unanswered> {
    let mut files = Files::default();
    for service in services {
        let answer = ask(
            channel,
            MessageRequest::FileContainingSymbol(service.clone()),
        )
        .await?;
        add_files(&mut files, answer)?;
    }
    // Servers answer with the file and, usually, all it imports; what is missing is asked for
    // by name.
    let mut asked = BTreeSet::new();
    loop {
        let missing: Vec<String> = files
            .missing()
            .into_iter()
            .filter(|name| !asked.contains(name))
            .collect();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            asked.insert(name.clone());
            let answer = ask(channel, MessageRequest::FileByFilename(name)).await?;
            add_files(&mut files, answer)?;
        }
    }
    Ok(files.encode())
}

fn add_files(files: &mut Files, answer: MessageResponse) -> Result<(), Unanswered> {
    let MessageResponse::FileDescriptorResponse(found) = answer else {
        return Err(unexpected(&answer).into());
    };
    for bytes in found.file_descriptor_proto {
        files
            .add(bytes)
            .map_err(|e| format!("its reflection answered a file that does not decode: {e}"))?;
    }
    Ok(())
}

fn unexpected(answer: &MessageResponse) -> String {
    match answer {
        MessageResponse::ErrorResponse(error) => format!(
            "its reflection answered an error ({}): {}",
            error.error_code, error.error_message
        ),
        other => format!("its reflection answered something else than asked: {other:?}"),
    }
}

/// The reflection services a server may serve, newest first: the two carry the same messages
/// (grpcio-reflection serves only the older).
const REFLECTION_PATHS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// One question on a reflection stream of its own, of the newest reflection service the
/// upstream serves.
async fn ask(channel: &Channel, request: MessageRequest) -> Result<MessageResponse, Unanswered> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut last = None;
    for path in REFLECTION_PATHS {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let codec: tonic_prost::ProstCodec<ServerReflectionRequest, ServerReflectionResponse> =
            tonic_prost::ProstCodec::default();
        let answers = grpc
            .streaming(
                tonic::Request::new(tokio_stream::once(request.clone())),
                http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await;
        let mut answers = match answers {
            Ok(answers) => answers.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                last = Some(status);
                continue;
            }
            Err(status) => return Err(format!("its reflection failed: {status}").into()),
        };
        return match answers.message().await {
            Ok(Some(ServerReflectionResponse {
                message_response: Some(answer),
                ..
            })) => Ok(answer),
            Ok(_) => Err("its reflection ended without an answer".to_owned().into()),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                last = Some(status);
                continue;
            }
            Err(status) => Err(format!("its reflection failed: {status}").into()),
        };
    }
    tracing::debug!(status = ?last, "no reflection service");
    Err(Unanswered {
        not_served: true,
        reason: "it does not serve gRPC server reflection (grpc.reflection.v1 or v1alpha \
                 ServerReflection): add it (grpcio-reflection, @grpc/reflection, \
                 tonic-reflection) or give the descriptors with --descriptors or --proto"
            .to_owned(),
    })
}
