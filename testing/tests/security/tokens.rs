//! Bearer tokens: each allows its tasks and operations only; the HTTP endpoints behind theirs.

use super::*;

const PRODUCER: &str = "producer-token-0123456789abcdef";

const ADMIN: &str = "admin-token-0123456789abcdef";

const HTTP_TOKEN: &str = "http-token-0123456789abcdef";

const EVERYTHING: &str = "everything-token-0123456789abcdef";

const SUBMIT_ONLY: &str = "submit-only-token-0123456789abcdef";

#[tokio::test]
async fn tokens_allow_their_tasks_and_operations_only() -> anyhow::Result<()> {
    use tonic::Code;

    let nats = NatsServer::start_temporary().await?;
    let _worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic()).serve(tasks::chaos())
    })
    .await?;
    let mut config = examples_config(&nats.url());
    config.tokens = Some(Arc::new(
        taskwire_gateway::auth::Tokens::parse(&format!(
            "# token operations tasks\n{PRODUCER} submit,read examples.magic.v1.*\n{ADMIN} read,cancel,admin *\n{EVERYTHING} submit,read,cancel,admin *\n{SUBMIT_ONLY} submit examples.magic.v1.*\n"
        ))
        .map_err(anyhow::Error::msg)?,
    ));
    config.http_addr = Some(LOOPBACK_ANY_PORT);
    config.http_token = Some(HTTP_TOKEN.into());
    let gateway = Gateway::start_with(config).await?;
    let http = gateway.http_addr().expect("the dashboard's address");
    let as_token = |token: Option<&str>| {
        let options = token.map_or_else(taskwire_client::ConnectOptions::default, |t| {
            taskwire_client::ConnectOptions::default().token(t)
        });
        let url = gateway.url();
        async move { Client::connect_with(url, options).await }
    };
    let code = |result: Result<i64, taskwire_client::Error>| result.err().and_then(|e| e.code());

    // No token, or an unknown one: UNAUTHENTICATED.
    assert_eq!(
        code(add_with(&as_token(None).await?).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(add_with(&as_token(Some("not-a-known-token-at-all")).await?).await),
        Some(Code::Unauthenticated)
    );

    // The producer submits and reads its tasks...
    let producer = as_token(Some(PRODUCER)).await?;
    assert_eq!(add_with(&producer).await?, 9);
    // ...and no other task, no cancel, no admin call.
    let sleep = producer
        .submit_json(
            "examples.chaos.v1.Chaos/Sleep",
            r#"{"millis":"1"}"#,
            taskwire_client::SubmitOptions::default(),
        )
        .await
        .expect_err("another task");
    assert_eq!(sleep.code(), Some(Code::PermissionDenied), "{sleep}");
    assert!(
        sleep.to_string().contains("examples.chaos.v1.Chaos/Sleep"),
        "{sleep}"
    );
    let admin = as_token(Some(ADMIN)).await?;
    let chaos = admin
        .submit_json(
            "examples.chaos.v1.Chaos/Sleep",
            r#"{"millis":"60000"}"#,
            taskwire_client::SubmitOptions::default(),
        )
        .await
        .expect_err("the admin token has no submit");
    assert_eq!(chaos.code(), Some(Code::PermissionDenied), "{chaos}");
    let id = producer
        .submit_json(
            "examples.magic.v1.Magic/Add",
            r#"{"arg1":"1"}"#,
            taskwire_client::SubmitOptions::default().countdown(Duration::from_secs(60)),
        )
        .await?
        .task_id;
    let cancel = producer.cancel(&id).await.expect_err("no cancel");
    assert_eq!(cancel.code(), Some(Code::PermissionDenied), "{cancel}");
    let workers = producer.workers().await.expect_err("no admin");
    assert_eq!(workers.code(), Some(Code::PermissionDenied), "{workers}");

    // Another task's id is unknown to the producer, not merely forbidden.
    let everything = as_token(Some(EVERYTHING)).await?;
    let other = everything
        .submit_json(
            "examples.chaos.v1.Chaos/Sleep",
            r#"{"millis":"1"}"#,
            taskwire_client::SubmitOptions::default(),
        )
        .await?
        .task_id;
    for refused in [
        producer
            .get(&other, false)
            .await
            .expect_err("another task's id"),
        producer
            .wait(&other, Duration::from_secs(1), false)
            .await
            .expect_err("another task's id"),
    ] {
        assert_eq!(refused.code(), Some(Code::NotFound), "{refused}");
    }

    // The admin token: admin calls, reads and cancels any task.
    assert!(!admin.workers().await?.is_empty());
    assert_eq!(
        admin.get(&id, false).await?.task,
        "examples.magic.v1.Magic/Add"
    );
    admin.cancel(&id).await?;

    // Health needs no token (probes); the HTTP endpoints need theirs, /healthz excepted.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(gateway.url())?
            .connect()
            .await?,
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{HTTP_TOKEN}"))
    };
    for (method, path, authorization, extra, status) in [
        ("GET", "/metrics", None, "", "401"),
        (
            "GET",
            "/metrics",
            Some(format!("Bearer {HTTP_TOKEN}")),
            "",
            "200",
        ),
        (
            "GET",
            "/metrics",
            Some(format!("bearer {HTTP_TOKEN}")),
            "",
            "200",
        ),
        (
            "GET",
            "/metrics",
            Some("Bearer wrong-token-0123456789".to_owned()),
            "",
            "401",
        ),
        ("GET", "/api/overview", None, "", "401"),
        (
            "GET",
            "/api/overview",
            Some(format!("Basic {basic}")),
            "",
            "200",
        ),
        ("GET", "/", None, "", "401"),
        ("POST", "/api/dead/x/replay", None, "", "401"),
        (
            "POST",
            "/api/dead/x/replay",
            Some(format!("Basic {basic}")),
            "Sec-Fetch-Site: cross-site\r\n",
            "403",
        ),
        ("GET", "/healthz", None, "", "200"),
    ] {
        assert_eq!(
            http_status(http, method, path, authorization.as_deref(), extra).await?,
            status,
            "{method} {path} {authorization:?}"
        );
    }

    // A task by its own method path: the same token rules.
    // Waiting for the result needs `read`; `taskwire-async: true` only submits.
    for (token, task, asynchronous, expected) in [
        (
            None,
            "/examples.magic.v1.Magic/Add",
            false,
            Some(Code::Unauthenticated),
        ),
        (Some(PRODUCER), "/examples.magic.v1.Magic/Add", false, None),
        (
            Some(PRODUCER),
            "/examples.chaos.v1.Chaos/Flaky",
            false,
            Some(Code::PermissionDenied),
        ),
        (
            Some(SUBMIT_ONLY),
            "/examples.magic.v1.Magic/Add",
            false,
            Some(Code::PermissionDenied),
        ),
        (
            Some(SUBMIT_ONLY),
            "/examples.magic.v1.Magic/Add",
            true,
            None,
        ),
    ] {
        let got = direct_call(&gateway.url(), task, token, asynchronous)
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(got, expected, "{task} with {token:?}, async {asynchronous}");
    }

    // SubmitMany refuses, one by one, the tasks the token may not submit.
    let results = producer
        .submit_many(vec![
            taskwire_client::request_json(
                "examples.magic.v1.Magic/Add",
                "{}",
                taskwire_client::SubmitOptions::default(),
            ),
            taskwire_client::request_json(
                "examples.chaos.v1.Chaos/Sleep",
                "{}",
                taskwire_client::SubmitOptions::default(),
            ),
        ])
        .await?;
    assert_eq!((results.submitted, results.refused), (1, 1));
    assert_eq!(results.results[1].code, Code::PermissionDenied as i32);
    Ok(())
}

async fn http_status(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    extra_headers: &str,
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nHost: test\r\n{auth}{extra_headers}Content-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// A call by the task's own method path, as a generated client in any language makes it.
async fn direct_call(
    url: &str,
    path: &'static str,
    token: Option<&str>,
    asynchronous: bool,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(AddArgs::default());
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("token"))?;
        request.metadata_mut().insert("authorization", value);
    }
    if asynchronous {
        request.metadata_mut().insert(
            "taskwire-async",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    request.set_timeout(WAIT);
    let _: tonic::Response<taskwire_examples::magic::v1::AddResult> = grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_open_dashboard_beside_tokens_and_tls_settings_over_http_are_refused()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = examples_config(&nats.url());
    config.tokens = Some(Arc::new(
        taskwire_gateway::auth::Tokens::parse(&format!("{PRODUCER} submit,read *"))
            .map_err(anyhow::Error::msg)?,
    ));
    config.http_addr = Some(LOOPBACK_ANY_PORT);
    let err = Gateway::start_with(config)
        .await
        .expect_err("an open dashboard beside tokens");
    assert!(
        format!("{err:#}").contains("TASKWIRE_HTTP_TOKEN"),
        "{err:#}"
    );

    let gateway = Gateway::start(&nats.url()).await?;
    let err = Client::connect_with(
        gateway.url(),
        taskwire_client::ConnectOptions::default().ca_pem(Ca::new("any")?.pem),
    )
    .await
    .expect_err("TLS settings with an http:// URL");
    assert!(err.to_string().contains("https://"), "{err}");
    Ok(())
}
