//! Connecting to a gateway: the endpoint, TLS and token, from code or the environment.

use std::fmt;
use std::time::Duration;

use taskwire::v1::admin_client::AdminClient;
use taskwire::v1::schedules_client::SchedulesClient;
use taskwire::v1::tasks_client::TasksClient;
use taskwire::v1::workflows_client::WorkflowsClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Client, Error};

/// Environment variables a client reads in [`ConnectOptions::from_env`].
pub mod env {
    /// Bearer token sent with every call.
    pub const TOKEN: &str = "TASKWIRE_TOKEN";
    /// PEM CA the gateway's certificate must chain to; turns TLS on.
    pub const TLS_CA: &str = "TASKWIRE_TLS_CA";
    /// PEM client certificate, for a gateway with mutual TLS (with `TASKWIRE_TLS_CLIENT_KEY`).
    pub const TLS_CLIENT_CERT: &str = "TASKWIRE_TLS_CLIENT_CERT";
    /// PEM key of the client certificate.
    pub const TLS_CLIENT_KEY: &str = "TASKWIRE_TLS_CLIENT_KEY";
    /// The name to verify the gateway's certificate against, when not the endpoint's host.
    pub const TLS_DOMAIN: &str = "TASKWIRE_TLS_DOMAIN";
}

/// How to reach a gateway that uses TLS or tokens.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

/// The channel every call goes through, adding the token when there is one.
#[derive(Clone, Debug)]
pub struct Transport {
    channel: Channel,
    authorization: Option<tonic::codegen::http::HeaderValue>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tls", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ConnectOptions {
    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Verifies the gateway's certificate against this CA (PEM); the endpoint should be
    /// `https://`.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) to a gateway with mutual TLS.
    pub fn client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Verifies the gateway's certificate against this name instead of the endpoint's host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The settings of `TASKWIRE_TOKEN`, `TASKWIRE_TLS_CA`, `TASKWIRE_TLS_CLIENT_CERT`,
    /// `TASKWIRE_TLS_CLIENT_KEY` and `TASKWIRE_TLS_DOMAIN`.
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let read = |name: &str, path: String| {
            std::fs::read(&path).map_err(|e| Error::Config(format!("{name}={path}: {e}")))
        };
        let mut options = Self {
            token: var(env::TOKEN),
            domain: var(env::TLS_DOMAIN),
            ..Self::default()
        };
        if let Some(ca) = var(env::TLS_CA) {
            options.ca_pem = Some(read(env::TLS_CA, ca)?);
        }
        match (var(env::TLS_CLIENT_CERT), var(env::TLS_CLIENT_KEY)) {
            (Some(cert), Some(key)) => {
                options.identity = Some((
                    read(env::TLS_CLIENT_CERT, cert)?,
                    read(env::TLS_CLIENT_KEY, key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(format!(
                    "set both {} and {}, or neither",
                    env::TLS_CLIENT_CERT,
                    env::TLS_CLIENT_KEY
                )));
            }
        }
        Ok(options)
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Transport {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(
        &mut self,
        mut request: tonic::codegen::http::Request<tonic::body::Body>,
    ) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(tonic::codegen::http::header::AUTHORIZATION, value.clone());
        }
        tonic::codegen::Service::call(&mut self.channel, request)
    }
}

impl Client {
    /// Connects to the gateway at `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(endpoint, ConnectOptions::default()).await
    }

    /// Connects with TLS (an `https://` endpoint and a CA; a client certificate for mutual
    /// TLS) and a bearer token, as `options` say.
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let connect_err = |source| Error::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let mut builder = Endpoint::from_shared(endpoint.clone())
            .map_err(connect_err)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if options.ca_pem.is_some() || options.identity.is_some() {
            if !endpoint.starts_with("https://") {
                return Err(Error::Config(format!(
                    "{endpoint}: TLS settings (a CA or a client certificate) need an https:// gateway URL; with http:// the token and data would go unencrypted"
                )));
            }
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &options.ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &options.identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            if let Some(domain) = &options.domain {
                tls = tls.domain_name(domain.clone());
            }
            builder = builder.tls_config(tls).map_err(connect_err)?;
        }
        let channel = builder.connect().await.map_err(connect_err)?;
        let authorization = options
            .token
            .map(|token| {
                format!("Bearer {token}").parse().map_err(|_| {
                    Error::Config("the token must be printable ASCII without spaces".into())
                })
            })
            .transpose()?;
        Ok(Self::with_transport(Transport {
            channel,
            authorization,
        }))
    }

    /// Uses a channel configured elsewhere (interceptors, load balancing).
    pub fn from_channel(channel: Channel) -> Self {
        Self::with_transport(Transport {
            channel,
            authorization: None,
        })
    }

    fn with_transport(transport: Transport) -> Self {
        Self {
            tasks: TasksClient::new(transport.clone()),
            admin: AdminClient::new(transport.clone()),
            schedules: SchedulesClient::new(transport.clone()),
            workflows: WorkflowsClient::new(transport),
        }
    }
}
