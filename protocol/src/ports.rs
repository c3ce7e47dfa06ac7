//! How a gateway or worker started on port 0 tells what started it the addresses it bound: with
//! `TASKWIRE_PORTS_FILE` set, it writes them there as JSON (`{"grpc":"127.0.0.1:50051",
//! "http":"127.0.0.1:9090"}`, each only when served) once it listens, as nats-server does with
//! its ports file. The file appears whole (written aside, then renamed).

use std::net::SocketAddr;
use std::path::Path;

/// The variable naming the file.
pub const ENV: &str = "TASKWIRE_PORTS_FILE";

/// The ports file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the addresses served to {path}: {source}")]
pub struct WriteError {
    path: String,
    source: std::io::Error,
}

/// The addresses a process listens on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// gRPC (the gateway).
    pub grpc: Option<SocketAddr>,
    /// HTTP: /metrics, and the gateway's dashboard.
    pub http: Option<SocketAddr>,
}

impl Ports {
    /// Writes the file whole: aside first, then renamed into place.
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let mut value = serde_json::Map::new();
        if let Some(grpc) = self.grpc {
            value.insert("grpc".into(), grpc.to_string().into());
        }
        if let Some(http) = self.http {
            value.insert("http".into(), http.to_string().into());
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(".partial");
        std::fs::write(&aside, serde_json::Value::Object(value).to_string())
            .and_then(|()| std::fs::rename(&aside, path))
            .map_err(|source| WriteError {
                path: path.display().to_string(),
                source,
            })
    }

    /// Reads the file; `None` while it is not there (or not one this module wrote).
    pub fn read(path: &Path) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let address = |name: &str| value.get(name)?.as_str()?.parse().ok();
        Some(Self {
            grpc: address("grpc"),
            http: address("http"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_as_written() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("ports.json");
        assert_eq!(Ports::read(&path), None);
        let ports = Ports {
            grpc: Some("127.0.0.1:50051".parse().expect("an address")),
            http: None,
        };
        ports.write(&path).expect("written");
        assert_eq!(Ports::read(&path), Some(ports));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            r#"{"grpc":"127.0.0.1:50051"}"#
        );
    }
}
