//! The processes of a taskwire system on one machine: nats-server (alone or clustered), the
//! gateway and workers, started as child processes and stopped with signals. `taskwire dev`,
//! `taskwire bench` and the test harness all start them through here.
//!
//! Ports are chosen by the servers themselves, never guessed: nats-server listens on a port of
//! its choosing and writes it to a ports file, the gateway and the workers write the addresses
//! they bound to the file named by `TASKWIRE_PORTS_FILE` ([`Ports`]). A restarted server gets
//! the port it had. Only the route ports of a cluster must be known before its servers start;
//! a cluster whose route port was taken meanwhile is started again on others.

mod nats;
mod process;

pub use nats::{ENV_NATS_SERVER, MIN_NATS_SERVER, NatsCluster, NatsServer, locate_nats_server};
pub use process::{
    ENV_PORTS_FILE, Ports, ProcessSpec, child_of, http_get, peak_rss_mib, sibling_binary, spawn,
    terminate, wait_for_ports, wait_for_task,
};

use std::time::Duration;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats-server not found: {0}")]
    NatsNotFound(String),
    #[error("{path} is nats-server {found}; taskwire needs {}.{} or newer: {}", MIN_NATS_SERVER.0, MIN_NATS_SERVER.1, nats::HOW_TO_GET_NATS)]
    NatsTooOld { path: String, found: String },
    #[error("cannot start {what}: {reason}")]
    Spawn { what: String, reason: String },
    #[error("{what} did not become ready within {waited:?}{hint}")]
    NotReady {
        what: String,
        waited: Duration,
        hint: String,
    },
    #[error("{what} cannot listen: its port is taken{hint}")]
    PortTaken { what: String, hint: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
