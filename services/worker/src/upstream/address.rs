//! Where the upstream server listens, and the gRPC channel to it.

use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// an upstream restarted later is found again. `lost` is told at once when a connection
    /// ends or cannot be made.
    pub(crate) fn channel(&self, lost: Arc<dyn Fn(&str) + Send + Sync>) -> Channel {
        // The authority is not used for a socket; gRPC wants one.
        let uri = match self {
            Self::Http(uri) => uri.to_string(),
            Self::Unix(_) => "http://localhost".to_owned(),
        };
        let endpoint = Endpoint::from_shared(uri)
            .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"))
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let address = self.clone();
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let address = address.clone();
            let lost = Arc::clone(&lost);
            async move {
                let stream: std::io::Result<Box<dyn Stream>> = match &address {
                    Address::Unix(path) => tokio::net::UnixStream::connect(path)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Stream>),
                    Address::Http(uri) => {
                        let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
                        let port = uri.port_u16().unwrap_or(80);
                        tokio::net::TcpStream::connect((host, port)).await.map(|s| {
                            let _ = s.set_nodelay(true);
                            Box::new(s) as Box<dyn Stream>
                        })
                    }
                };
                let stream = stream.inspect_err(|e| lost(&format!("cannot connect to it: {e}")))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Watched {
                    stream,
                    lost,
                    ended: false,
                }))
            }
        }))
    }
}

/// A connection's stream, of either kind.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The stream of a connection to the upstream, which tells when it ends: a read that finds
/// the end, or fails.
struct Watched {
    stream: Box<dyn Stream>,
    lost: Arc<dyn Fn(&str) + Send + Sync>,
    ended: bool,
}

impl Watched {
    fn end(&mut self, why: &str) {
        if !self.ended {
            self.ended = true;
            (self.lost)(why);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.end("its connection ended");
            }
            Poll::Ready(Err(e)) => {
                let why = format!("its connection failed: {e}");
                self.end(&why);
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
