//! Security: the gateway and workers as NATS users of the documented account config
//! (`deploy/nats/accounts.conf`), each allowed only its own part.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskwire::examples::magic::v1::AddArgs;
use taskwire_client::Client;
use taskwire_client::examples::magic::v1::MagicClient;
use taskwire_protocol::NatsAuth;
use taskwire_testing::{Gateway, NatsServer, Worker, examples_config, tasks};

const WAIT: Duration = Duration::from_secs(20);

/// A NATS user with an nkey whose seed is in a file, as `TASKWIRE_NATS_NKEY` names it, and
/// replies under its own inbox prefix, as accounts.conf allows it.
struct User {
    name: String,
    public_key: String,
    seed_file: PathBuf,
}

impl User {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let pair = nkeys::KeyPair::new_user();
        let seed_file = dir.join(format!("{name}.nk"));
        std::fs::write(&seed_file, format!("{}\n", pair.seed()?))?;
        Ok(Self {
            name: name.to_owned(),
            public_key: pair.public_key(),
            seed_file,
        })
    }

    fn auth(&self) -> NatsAuth {
        NatsAuth {
            nkey_file: Some(self.seed_file.clone()),
            inbox_prefix: Some(format!("_INBOX.{}", self.name)),
            ..NatsAuth::default()
        }
    }
}

/// `deploy/nats/accounts.conf` with these users' keys in place of its placeholders.
fn accounts(gateway: &User, magic_worker: &User) -> anyhow::Result<String> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/accounts.conf");
    let text = std::fs::read_to_string(file)?;
    let mut replaced = text.clone();
    for (name, user) in [
        ("GATEWAY_NKEY", gateway),
        ("MAGIC_WORKER_NKEY", magic_worker),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .ok_or_else(|| anyhow::anyhow!("accounts.conf has no {name}"))?;
        replaced = replaced.replace(line, &format!("{name}: \"{}\"", user.public_key));
    }
    Ok(format!("jetstream {{}}\n{replaced}"))
}

/// A raw NATS connection as `user`, recording the errors the server reports.
async fn connect_as(
    nats: &NatsServer,
    user: &User,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let options = user
        .auth()
        .apply(async_nats::ConnectOptions::new())
        .await
        .map_err(anyhow::Error::msg)?
        .event_callback(move |event| {
            let seen = Arc::clone(&seen);
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().expect("errors").push(e.to_string());
                }
            }
        });
    Ok((options.connect(nats.url()).await?, errors))
}

#[tokio::test]
async fn the_gateway_and_a_worker_run_as_their_own_nats_users() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gateway_user = User::new(dir.path(), "gateway")?;
    let worker_user = User::new(dir.path(), "magic-worker")?;
    let config = accounts(&gateway_user, &worker_user)?;
    let nats = NatsServer::start_temporary_with_config(&config, gateway_user.auth()).await?;

    // Without credentials NATS refuses the connection.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous connection was accepted");

    // The gateway (which creates the streams) and the magic worker, each as its user.
    let mut gateway_config = examples_config(&nats.url());
    gateway_config.nats_auth = gateway_user.auth();
    let gateway = Gateway::start_with(gateway_config).await?;
    let worker_auth = worker_user.auth();
    let _worker = Worker::start(&nats.url(), move |w| {
        w.serve(tasks::magic()).nats_auth(worker_auth)
    })
    .await?;
    let magic = MagicClient::new(Client::connect(gateway.url()).await?);
    let sum = magic
        .add_and_wait(
            AddArgs {
                arg1: 1,
                arg2: 2,
                arg3: 3,
            },
            WAIT,
        )
        .await?
        .sum;
    assert_eq!(sum, 6);

    // The magic worker's user may pull its own consumer, and no other task's.
    let (worker_nats, errors) = connect_as(&nats, &worker_user).await?;
    let next = |consumer: &str| {
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.TASKWIRE_TASKS.{consumer}");
        let worker_nats = worker_nats.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                worker_nats.request(subject, r#"{"batch":1,"no_wait":true}"#.into()),
            )
            .await
        }
    };
    assert!(
        matches!(next("examples-magic-v1-Magic-Add").await, Ok(Ok(_))),
        "the worker's own consumer did not answer"
    );
    assert!(
        !matches!(next("examples-chaos-v1-Chaos-Sleep").await, Ok(Ok(_))),
        "another task's consumer answered the magic worker"
    );
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation")
                && e.contains("examples-chaos-v1-Chaos-Sleep")),
        "{denied:?}"
    );
    // Nor may it read replies sent to others: another worker's pulled tasks, the gateway's
    // answers.
    for inbox in ["_INBOX.>", "_INBOX.gateway.>"] {
        let _subscription = worker_nats.subscribe(inbox).await?;
        worker_nats.flush().await?;
        let refused = tokio::time::timeout(WAIT, async {
            loop {
                let seen = errors.lock().expect("errors").clone();
                if seen.iter().any(|e| {
                    e.contains("Permissions Violation for Subscription") && e.contains(inbox)
                }) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            refused.is_ok(),
            "the magic worker may subscribe to {inbox}: {:?}",
            errors.lock().expect("errors")
        );
    }
    // An inbox prefix that is not a literal subject is refused before connecting.
    let wild = NatsAuth {
        inbox_prefix: Some("_INBOX.*".into()),
        ..NatsAuth::default()
    };
    let refused = wild
        .apply(async_nats::ConnectOptions::new())
        .await
        .err()
        .unwrap_or_default();
    assert!(refused.contains("not a literal subject"), "{refused:?}");
    // Without their inbox prefixes, the gateway and the worker cannot receive replies: each
    // stops at start, naming the setting to fix.
    let mut unprefixed = examples_config(&nats.url());
    unprefixed.nats_auth = NatsAuth {
        inbox_prefix: None,
        ..gateway_user.auth()
    };
    let worker_unprefixed = NatsAuth {
        inbox_prefix: None,
        ..worker_user.auth()
    };
    let url = nats.url();
    let (gateway_refused, worker_refused) = tokio::join!(
        Gateway::start_with(unprefixed),
        Worker::start(&url, move |w| w
            .serve(tasks::magic())
            .nats_auth(worker_unprefixed)),
    );
    for (who, refused) in [
        ("gateway", gateway_refused.err()),
        ("worker", worker_refused.err()),
    ] {
        let refused = refused.map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(
            refused.contains("TASKWIRE_NATS_INBOX_PREFIX"),
            "the {who} without its inbox prefix: {refused:?}"
        );
    }
    // Nor may it publish tasks: producers go through the gateway.
    worker_nats
        .publish("taskwire.tasks.examples.magic.v1.Magic.Add", "x".into())
        .await?;
    worker_nats.flush().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains("taskwire.tasks.")),
        "{denied:?}"
    );
    // Results: of its own task types only. It may read its own (a direct get with the subject in
    // the API subject answers, here that there is none)...
    let id = "0123456789abcdef0123456789abcdef";
    let read = |subject: String, body: &'static str| {
        let worker_nats = worker_nats.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                worker_nats.request(subject, body.into()),
            )
            .await
        }
    };
    let own = format!("taskwire.results.{id}.examples.magic.v1.Magic.Add");
    let other = format!("taskwire.results.{id}.examples.chaos.v1.Chaos.Sleep");
    assert!(
        matches!(
            read(format!("$JS.API.DIRECT.GET.TASKWIRE_RESULTS.{own}"), "").await,
            Ok(Ok(_))
        ),
        "the worker cannot read its own task's result"
    );
    // ...but neither read another task type's result, nor any by a request body...
    assert!(
        !matches!(
            read(format!("$JS.API.DIRECT.GET.TASKWIRE_RESULTS.{other}"), "").await,
            Ok(Ok(_))
        ),
        "the magic worker read a Chaos result"
    );
    assert!(
        !matches!(
            read(
                "$JS.API.DIRECT.GET.TASKWIRE_RESULTS".into(),
                r#"{"last_by_subj":"taskwire.results.>"}"#
            )
            .await,
            Ok(Ok(_))
        ),
        "the magic worker listed results"
    );
    // ...nor store one for another task type.
    worker_nats.publish(other.clone(), "x".into()).await?;
    worker_nats.flush().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains(&other)),
        "{denied:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_nats_credentials_stop_the_process_with_the_setting_to_fix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.nk");
    std::fs::write(&empty, "")?;
    let auth = NatsAuth {
        nkey_file: Some(empty),
        ..NatsAuth::default()
    };
    let err = auth
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("an empty seed file");
    assert!(
        err.contains("TASKWIRE_NATS_NKEY") && err.contains("seed"),
        "{err}"
    );
    let missing = NatsAuth {
        creds_file: Some(dir.path().join("missing.creds")),
        ..NatsAuth::default()
    };
    let err = missing
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("a missing creds file");
    assert!(err.contains("TASKWIRE_NATS_CREDS"), "{err}");
    Ok(())
}

/// A CA and the certificates it signs, as PEM.
struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { params, key, pem })
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    }
}

async fn add_with(client: &Client) -> Result<i64, taskwire_client::Error> {
    let handle = client
        .submit::<taskwire::examples::magic::v1::AddResult>(
            "examples.magic.v1.Magic/Add",
            &AddArgs {
                arg1: 2,
                arg2: 3,
                arg3: 4,
            },
            taskwire_client::SubmitOptions::default(),
        )
        .await?;
    Ok(handle.get(WAIT).await?.sum)
}

#[tokio::test]
async fn tls_and_mutual_tls_on_the_gateway() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let ca = Ca::new("taskwire test CA")?;
    let (server_cert, server_key) = ca.issue(&["localhost", "127.0.0.1"])?;
    let (client_cert, client_key) = ca.issue(&["producer"])?;
    let stranger = Ca::new("another CA")?;
    let (stranger_cert, stranger_key) = stranger.issue(&["producer"])?;
    let trusting = || taskwire_client::ConnectOptions::default().ca_pem(ca.pem.clone());

    // TLS: a client that trusts the CA gets through; plaintext does not.
    let mut config = examples_config(&nats.url());
    config.tls = Some(taskwire_gateway::Tls {
        cert_pem: server_cert.clone().into_bytes(),
        key_pem: server_key.clone().into_bytes(),
        client_ca_pem: None,
    });
    let gateway = Gateway::start_with(config).await?;
    let https = gateway.url().replace("http://", "https://");
    let client = Client::connect_with(&https, trusting()).await?;
    assert_eq!(add_with(&client).await?, 9);
    let plain = match Client::connect(gateway.url()).await {
        Ok(client) => add_with(&client).await.err(),
        Err(e) => Some(e),
    };
    assert!(plain.is_some(), "a plaintext client got through a TLS port");
    let untrusting = Client::connect_with(
        &https,
        taskwire_client::ConnectOptions::default().ca_pem(stranger.pem.clone()),
    )
    .await;
    assert!(
        match untrusting {
            Ok(client) => add_with(&client).await.is_err(),
            Err(_) => true,
        },
        "a client trusting another CA accepted the gateway"
    );
    drop(gateway);

    // Mutual TLS: only a client certificate the client CA signed gets through.
    let mut config = examples_config(&nats.url());
    config.tls = Some(taskwire_gateway::Tls {
        cert_pem: server_cert.into_bytes(),
        key_pem: server_key.into_bytes(),
        client_ca_pem: Some(ca.pem.clone().into_bytes()),
    });
    let gateway = Gateway::start_with(config).await?;
    let https = gateway.url().replace("http://", "https://");
    let with_cert = Client::connect_with(
        &https,
        trusting().client_certificate(client_cert, client_key),
    )
    .await?;
    assert_eq!(add_with(&with_cert).await?, 9);
    for (what, options) in [
        ("no client certificate", trusting()),
        (
            "a certificate of another CA",
            trusting().client_certificate(stranger_cert, stranger_key),
        ),
    ] {
        let refused = match Client::connect_with(&https, options).await {
            Ok(client) => add_with(&client).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{what} got through mutual TLS");
    }
    Ok(())
}

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
    let http = taskwire_cli::stack::free_addr()?;
    config.http_addr = Some(http);
    config.http_token = Some(HTTP_TOKEN.into());
    let gateway = Gateway::start_with(config).await?;
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
    let _: tonic::Response<taskwire::examples::magic::v1::AddResult> = grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_gateway_and_workers_speak_tls_to_nats_with_client_certificates() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("taskwire NATS CA")?;
    let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"])?;
    let (client_cert, client_key) = ca.issue(&["taskwire"])?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_file = write("ca.pem", &ca.pem)?;
    let config = format!(
        "jetstream {{}}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        write("server.pem", &server_cert)?.display(),
        write("server.key", &server_key)?.display(),
        ca_file.display(),
    );
    let auth = NatsAuth {
        ca_file: Some(ca_file),
        client_cert: Some((
            write("client.pem", &client_cert)?,
            write("client.key", &client_key)?,
        )),
        ..NatsAuth::default()
    };
    let nats = NatsServer::start_temporary_with_config(&config, auth.clone()).await?;

    // Without a client certificate the server refuses the connection.
    let without = NatsAuth {
        client_cert: None,
        ..auth.clone()
    };
    let refused = without
        .apply(async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)))
        .await
        .map_err(anyhow::Error::msg)?
        .connect(nats.url())
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );

    let mut gateway_config = examples_config(&nats.url());
    gateway_config.nats_auth = auth.clone();
    let gateway = Gateway::start_with(gateway_config).await?;
    let worker_auth = auth.clone();
    let _worker = Worker::start(&nats.url(), move |w| {
        w.serve(tasks::magic()).nats_auth(worker_auth)
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;
    assert_eq!(add_with(&client).await?, 9);
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
    config.http_addr = Some(taskwire_cli::stack::free_addr()?);
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
