//! Security: the gateway and workers as NATS users of the documented account config
//! (`deploy/nats/accounts.conf`), each allowed only its own part.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskwire_client::Client;
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_protocol::NatsAuth;
use taskwire_testing::{Gateway, LOOPBACK_ANY_PORT, NatsServer, Worker, examples_config, tasks};

mod nats;
mod tls;
mod tokens;

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
        .submit::<taskwire_examples::magic::v1::AddResult>(
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
