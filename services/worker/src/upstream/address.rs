//! Where the upstream server listens, and the gRPC channel to it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

/// The address of an upstream gRPC server: `unix:///path/to.sock` (or `unix:relative.sock`),
/// or `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// A plain-text HTTP/2 address.
    Http(Uri),
}

impl FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let wanted = "use unix:///path/to.sock or http://127.0.0.1:PORT";
        if let Some(path) = text.strip_prefix("unix://").or(text.strip_prefix("unix:")) {
            if path.is_empty() {
                return Err(format!("{text:?} names no socket: {wanted}"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if text.starts_with("http://") {
            let uri: Uri = text
                .parse()
                .map_err(|e| format!("{text:?} is not an address: {e}; {wanted}"))?;
            if uri.port_u16().is_none() {
                return Err(format!("{text:?} has no port: {wanted}"));
            }
            return Ok(Self::Http(uri));
        }
        Err(format!("{text:?} is not an upstream address: {wanted}"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Http(uri) => write!(f, "{uri}"),
        }
    }
}

impl Address {
    /// A channel to the upstream that connects when first used and again after a loss, so that
    /// an upstream restarted later is found again.
    pub(crate) fn channel(&self) -> Channel {
        let endpoint = |uri: &str| {
            Endpoint::from_shared(uri.to_owned())
                .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"))
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        };
        match self {
            Self::Http(uri) => endpoint(&uri.to_string()).connect_lazy(),
            Self::Unix(path) => {
                let path = path.clone();
                // The authority is not used for a socket; gRPC wants one.
                endpoint("http://localhost").connect_with_connector_lazy(tower::service_fn(
                    move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_to_write() {
        assert_eq!(
            "unix:///tmp/w.sock".parse::<Address>(),
            Ok(Address::Unix("/tmp/w.sock".into()))
        );
        assert_eq!(
            "unix:w.sock".parse::<Address>(),
            Ok(Address::Unix("w.sock".into()))
        );
        assert!(matches!(
            "http://127.0.0.1:50051".parse::<Address>(),
            Ok(Address::Http(_))
        ));
        for bad in [
            "127.0.0.1:50051",
            "http://127.0.0.1",
            "unix://",
            "grpc://x:1",
        ] {
            let err = bad.parse::<Address>().expect_err(bad);
            assert!(err.contains("unix:///path/to.sock"), "{bad}: {err}");
        }
    }
}
