//! Security: the gateway and workers as NATS users of the documented account config
//! (`deploy/nats/accounts.conf`), each allowed only its own part.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskwire::broker::NatsAuth;
use taskwire::examples::magic::v1::AddArgs;
use taskwire_client::Client;
use taskwire_client::examples::magic::v1::MagicClient;
use taskwire_testing::{Gateway, NatsServer, Worker, examples_config, tasks};

const WAIT: Duration = Duration::from_secs(20);

/// A NATS user with an nkey whose seed is in a file, as `TASKWIRE_NATS_NKEY` names it.
struct User {
    public_key: String,
    seed_file: PathBuf,
}

impl User {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let pair = nkeys::KeyPair::new_user();
        let seed_file = dir.join(format!("{name}.nk"));
        std::fs::write(&seed_file, format!("{}\n", pair.seed()?))?;
        Ok(Self {
            public_key: pair.public_key(),
            seed_file,
        })
    }

    fn auth(&self) -> NatsAuth {
        NatsAuth {
            nkey_file: Some(self.seed_file.clone()),
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
