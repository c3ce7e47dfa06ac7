//! The connection to NATS: credentials and TLS from the environment, and what the server
//! refused.

use super::*;

/// How a process authenticates to NATS and secures the connection: a `.creds` file, an nkey
/// seed, or a user and password, and TLS with a CA and optionally a client certificate. Read
/// from `TASKWIRE_NATS_CREDS`, `TASKWIRE_NATS_NKEY` (a file holding the seed),
/// `TASKWIRE_NATS_USER` / `TASKWIRE_NATS_PASSWORD`, `TASKWIRE_NATS_CA`, `TASKWIRE_NATS_CERT` and
/// `TASKWIRE_NATS_KEY`, and the inbox prefix from `TASKWIRE_NATS_INBOX_PREFIX`; the gateway, the
/// workers and the CLI use the same settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_file: Option<std::path::PathBuf>,
    /// A user and password.
    pub user_password: Option<(String, String)>,
    /// CA certificate(s) to trust (PEM); turns TLS on.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Subject prefix of reply inboxes instead of `_INBOX`, e.g. `_INBOX.magic-worker`.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: never the password.
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("user", &self.user_password.as_ref().map(|(user, _)| user))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl NatsAuth {
    /// The settings in the environment. Errors name the variable to fix.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = |name: &str| var(name).map(std::path::PathBuf::from);
        let mut auth = Self {
            creds_file: path(env::NATS_CREDS),
            nkey_file: path(env::NATS_NKEY),
            ca_file: path(env::NATS_CA),
            inbox_prefix: var(env::NATS_INBOX_PREFIX),
            ..Self::default()
        };
        if let Some(prefix) = &auth.inbox_prefix {
            check_inbox_prefix(prefix)
                .map_err(|why| format!("{}={prefix:?} {why}", env::NATS_INBOX_PREFIX))?;
        }
        match (var(env::NATS_USER), var(env::NATS_PASSWORD)) {
            (Some(user), Some(password)) => auth.user_password = Some((user, password)),
            (None, None) => {}
            _ => {
                return Err(format!(
                    "set both {} and {}, or neither",
                    env::NATS_USER,
                    env::NATS_PASSWORD
                ));
            }
        }
        match (path(env::NATS_CERT), path(env::NATS_KEY)) {
            (Some(cert), Some(key)) => auth.client_cert = Some((cert, key)),
            (None, None) => {}
            _ => {
                return Err(format!(
                    "set both {} and {}, or neither",
                    env::NATS_CERT,
                    env::NATS_KEY
                ));
            }
        }
        let ways = [
            auth.creds_file.is_some(),
            auth.nkey_file.is_some(),
            auth.user_password.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(format!(
                "set one of {}, {} and {}/{}",
                env::NATS_CREDS,
                env::NATS_NKEY,
                env::NATS_USER,
                env::NATS_PASSWORD
            ));
        }
        Ok(auth)
    }

    /// `options` with these settings applied. Files are read now, so a missing or empty one
    /// stops the process at start rather than at the first reconnect.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        if let Some(file) = &self.creds_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| format!("{}={}: {e}", env::NATS_CREDS, file.display()))?;
        }
        if let Some(file) = &self.nkey_file {
            let seed = std::fs::read_to_string(file)
                .map_err(|e| format!("{}={}: {e}", env::NATS_NKEY, file.display()))?;
            let seed = seed.trim();
            if !seed.starts_with('S') {
                return Err(format!(
                    "{}={} does not hold an nkey seed (a line starting with S)",
                    env::NATS_NKEY,
                    file.display()
                ));
            }
            options = options.nkey(seed.to_owned());
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        for (name, file) in [
            (env::NATS_CA, self.ca_file.as_ref()),
            (env::NATS_CERT, self.client_cert.as_ref().map(|c| &c.0)),
            (env::NATS_KEY, self.client_cert.as_ref().map(|c| &c.1)),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(format!("{name}={}: no such file", file.display()));
            }
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            check_inbox_prefix(prefix).map_err(|why| format!("inbox prefix {prefix:?} {why}"))?;
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// The permission errors NATS reported on a connection. A request whose subject the user may
/// not publish to, or whose reply it may not receive, only times out; what NATS refused says
/// what to fix.
/// It also counts the connection's (re)connects, so that followers of buckets can read them
/// again at once after a broker restart.
#[derive(Clone, Debug)]
pub struct Refusals(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::Arc<tokio::sync::watch::Sender<u64>>,
);

impl Default for Refusals {
    fn default() -> Self {
        Self(
            std::sync::Arc::default(),
            std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        )
    }
}

/// Most permission errors a connection remembers.
const MAX_REFUSALS: usize = 16;

impl Refusals {
    /// `options` recording the permission errors of the connection they make.
    pub fn watch(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let seen = self.clone();
        options.event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::Connected = &event {
                    seen.1.send_modify(|n| *n += 1);
                }
                if let async_nats::Event::ServerError(e) = &event {
                    let text = e.to_string();
                    if text.to_lowercase().contains("permissions violation") {
                        let mut seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
                        // The first ones explain; a long-lived process keeps no more.
                        if seen.len() < MAX_REFUSALS {
                            seen.push(text);
                        }
                    }
                }
            }
        })
    }

    /// Changes on every (re)connect of the connection from now on.
    pub fn connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }

    /// What NATS refused, with what to change; `None` when it refused nothing.
    pub fn explain(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let first = seen.first()?;
        let hint = if seen
            .iter()
            .any(|s| s.to_lowercase().contains("subscription"))
        {
            format!(
                "its replies are refused: set {} to the inbox prefix this NATS user may subscribe to (e.g. _INBOX.<user>)",
                env::NATS_INBOX_PREFIX
            )
        } else {
            "check this NATS user's permissions (deploy/nats/accounts.conf)".to_owned()
        };
        Some(format!("NATS refused it: {first}; {hint}"))
    }
}

/// An inbox prefix is a literal subject: dot-separated tokens, none empty, no wildcards or
/// whitespace.
fn check_inbox_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix
        .split('.')
        .any(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>'))
    {
        return Err(
            "is not a literal subject: use dot-separated tokens without spaces, `*` or `>` (for example _INBOX.magic-worker)",
        );
    }
    Ok(())
}

/// The servers of a NATS URL setting: one URL, or several separated by commas.
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}
