//! Environment variables of the stream settings, read by every process that may create them.

/// How long results and events are kept, as a duration (`24h`).
pub const RESULT_TTL: &str = "TASKWIRE_RESULT_TTL";
/// Stream replicas: 1 on one server, 3 in a cluster.
pub const REPLICAS: &str = "TASKWIRE_REPLICAS";
/// Most tasks queued per task type; a full queue refuses new tasks.
pub const MAX_QUEUED: &str = "TASKWIRE_MAX_QUEUED";
/// A NATS `.creds` file.
pub const NATS_CREDS: &str = "TASKWIRE_NATS_CREDS";
/// A file holding an nkey seed.
pub const NATS_NKEY: &str = "TASKWIRE_NATS_NKEY";
/// A NATS user (with `TASKWIRE_NATS_PASSWORD`).
pub const NATS_USER: &str = "TASKWIRE_NATS_USER";
/// The NATS user's password.
pub const NATS_PASSWORD: &str = "TASKWIRE_NATS_PASSWORD";
/// CA certificate(s) for TLS to NATS.
pub const NATS_CA: &str = "TASKWIRE_NATS_CA";
/// Client certificate for TLS to NATS (with `TASKWIRE_NATS_KEY`).
pub const NATS_CERT: &str = "TASKWIRE_NATS_CERT";
/// Key of the client certificate.
pub const NATS_KEY: &str = "TASKWIRE_NATS_KEY";
/// The subject prefix of this process's reply inboxes (default `_INBOX`), so that NATS
/// permissions can give each user replies under its own prefix only.
pub const NATS_INBOX_PREFIX: &str = "TASKWIRE_NATS_INBOX_PREFIX";
