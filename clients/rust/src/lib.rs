//! The typed Rust producer client of taskwire.
//!
//! Generated stubs (`MagicClient`) submit tasks through the gateway and return a
//! [`TaskHandle`] typed by the task's output message: Celery's `delay(...).get()`, checked by
//! the compiler.
//!
//! ```no_run
//! use std::time::Duration;
//! use taskwire::examples::magic::v1::AddArgs;
//! use taskwire_client::examples::magic::v1::MagicClient;
//!
//! # async fn run() -> Result<(), taskwire_client::Error> {
//! let magic = MagicClient::connect("http://127.0.0.1:50051").await?;
//! let handle = magic.add(AddArgs { arg1: 1, arg2: 2, arg3: 3 }).await?;
//! let result = handle.get(Duration::from_secs(5)).await?;
//! assert_eq!(result.sum, 6);
//! # Ok(())
//! # }
//! ```
//!
//! Projects generate stubs for their own contracts with `taskwire-build`; [`Client`] also
//! submits any task by name.

extern crate self as taskwire_client;

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use tracing::Instrument as _;

use taskwire::v1::admin_client::AdminClient;
use taskwire::v1::schedules_client::SchedulesClient;
use taskwire::v1::tasks_client::TasksClient;
use taskwire::v1::{self, TaskState};
use tonic::transport::{Channel, Endpoint};

pub use taskwire::v1::{TaskInfo, TaskType};

/// Producer stubs of the example contracts.
pub mod examples {
    /// `examples.magic.v1`.
    pub mod magic {
        #[allow(clippy::all, missing_docs)]
        pub mod v1 {
            taskwire::include_tasks!("examples.magic.v1");
        }
    }
    /// `examples.chaos.v1`.
    pub mod chaos {
        #[allow(clippy::all, missing_docs)]
        pub mod v1 {
            taskwire::include_tasks!("examples.chaos.v1");
        }
    }
}

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// The gateway refused the call; the status says why and what to fix.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// The task ran and failed.
    #[error("task {id} failed: {message}")]
    TaskFailed {
        id: String,
        message: String,
        retryable: bool,
    },
    /// The task was cancelled.
    #[error("task {id} was cancelled")]
    Cancelled { id: String },
    #[error("task {id} expired: it was not started before its expiry time")]
    Expired { id: String },
    /// A connection setting is wrong (a file missing, a token malformed).
    #[error("{0}")]
    Config(String),
    /// The result does not decode as the task's output type.
    #[error("the result of task {id} does not decode: {source}")]
    Decode {
        id: String,
        source: prost::DecodeError,
    },
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl Error {
    /// The gRPC status code, when the gateway refused the call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "error",
    }
}

/// Options of one submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The same key for the same task type gives the same task, stored once, for as long as
    /// its state or result is kept.
    pub idempotency_key: Option<String>,
    /// Overrides the task's declared `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Overrides the task's declared time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Overrides the task's declared first retry delay.
    pub backoff_initial: Option<Duration>,
    /// Overrides the task's declared longest retry delay.
    pub backoff_max: Option<Duration>,
    /// Run no earlier than this time.
    pub not_before: Option<SystemTime>,
    /// Run no earlier than this long after submit.
    pub countdown: Option<Duration>,
    /// Which tasks start first when there is a backlog.
    pub priority: Option<v1::Priority>,
    /// Never start after this time.
    pub expires_at: Option<SystemTime>,
    /// Never start later than this long after submit (or after `not_before`).
    pub ttl: Option<Duration>,
    /// How long the result is kept.
    pub result_ttl: Option<Duration>,
}

impl SubmitOptions {
    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Sets the time limit of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry delays: `initial`, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = Some(initial);
        self.backoff_max = Some(max);
        self
    }

    /// Runs the task no earlier than `at`.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Runs the task no earlier than `delay` from now (Celery's countdown).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: v1::Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The task is never started after `at`; it ends as expired instead.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The task is never started later than `ttl` after it is due; it ends as expired instead.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps the result this long.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = Some(ttl);
        self
    }

    /// The options as the gateway API spells them.
    pub fn into_proto(self) -> v1::SubmitOptions {
        let duration =
            |d: Option<Duration>| d.and_then(|d| prost_types::Duration::try_from(d).ok());
        v1::SubmitOptions {
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            max_attempts: self.max_attempts.unwrap_or_default(),
            timeout: duration(self.timeout),
            backoff_initial: duration(self.backoff_initial),
            backoff_max: duration(self.backoff_max),
            not_before: self.not_before.map(prost_types::Timestamp::from),
            countdown: duration(self.countdown),
            priority: self.priority.unwrap_or_default() as i32,
            expires_at: self.expires_at.map(prost_types::Timestamp::from),
            ttl: duration(self.ttl),
            result_ttl: duration(self.result_ttl),
        }
    }
}

/// The untyped client: one HTTP/2 connection to a gateway, cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    tasks: TasksClient<Transport>,
    admin: AdminClient<Transport>,
    schedules: SchedulesClient<Transport>,
}

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

/// The channel every call goes through, adding the token when there is one.
#[derive(Clone, Debug)]
pub struct Transport {
    channel: Channel,
    authorization: Option<tonic::codegen::http::HeaderValue>,
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
            schedules: SchedulesClient::new(transport),
        }
    }

    /// Submits `task` with typed arguments and returns a handle typed by its output.
    pub async fn submit<O: prost::Message + Default>(
        &self,
        task: &str,
        args: &impl prost::Message,
        options: SubmitOptions,
    ) -> Result<TaskHandle<O>, Error> {
        self.submit_described(task, "", args, options).await
    }

    /// Submits `task` with arguments as proto3 JSON; returns the gateway's answer.
    pub async fn submit_json(
        &self,
        task: &str,
        json: &str,
        options: SubmitOptions,
    ) -> Result<v1::SubmitResponse, Error> {
        self.submit_raw(
            task,
            v1::submit_request::Args::ArgsJson(json.to_owned()),
            options,
        )
        .await
    }

    /// Submits typed arguments as [`Client::submit`] does, with the producer's schema
    /// fingerprint ([`taskwire::schema`]): when the workers registered another schema for
    /// `task`, the gateway refuses it with FAILED_PRECONDITION instead of storing a task they
    /// would misread. Generated stubs call this.
    pub async fn submit_described<O: prost::Message + Default>(
        &self,
        task: &str,
        descriptor_hash: &str,
        args: &impl prost::Message,
        options: SubmitOptions,
    ) -> Result<TaskHandle<O>, Error> {
        let id = self
            .submit_request(v1::SubmitRequest {
                task: task.to_owned(),
                args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
                options: Some(options.into_proto()),
                descriptor_hash: descriptor_hash.to_owned(),
            })
            .await?
            .task_id;
        Ok(TaskHandle {
            client: self.clone(),
            id,
            output: PhantomData,
        })
    }

    /// Submits `task` with arguments as protobuf bytes or proto3 JSON; returns the gateway's
    /// answer (the id, and whether it was a duplicate).
    pub async fn submit_raw(
        &self,
        task: &str,
        args: v1::submit_request::Args,
        options: SubmitOptions,
    ) -> Result<v1::SubmitResponse, Error> {
        self.submit_request(v1::SubmitRequest {
            task: task.to_owned(),
            args: Some(args),
            options: Some(options.into_proto()),
            ..Default::default()
        })
        .await
    }

    async fn submit_request(
        &self,
        request: v1::SubmitRequest,
    ) -> Result<v1::SubmitResponse, Error> {
        let task = request.task.clone();
        let task = task.as_str();
        let span = submit_span(task, "Submit");
        async {
            let mut request = tonic::Request::new(request);
            taskwire::propagation::inject_metadata(request.metadata_mut());
            let response = self.tasks.clone().submit(request).await;
            Ok(traced(response)?.into_inner())
        }
        .instrument(span)
        .await
    }

    /// Submits `task` and follows it in one call: returns once the task is stored, with a
    /// [`Pending`] that yields its final state. Cheaper than `submit` then `wait`.
    pub async fn submit_and_wait(
        &self,
        task: &str,
        args: v1::submit_request::Args,
        options: SubmitOptions,
        timeout: Duration,
        json: bool,
    ) -> Result<Pending, Error> {
        let submit = v1::SubmitRequest {
            task: task.to_owned(),
            args: Some(args),
            options: Some(options.into_proto()),
            ..Default::default()
        };
        self.submit_and_wait_request(submit, timeout, json).await
    }

    async fn submit_and_wait_request(
        &self,
        submit: v1::SubmitRequest,
        timeout: Duration,
        json: bool,
    ) -> Result<Pending, Error> {
        let span = submit_span(&submit.task, "SubmitAndWait");
        let request = v1::SubmitAndWaitRequest {
            submit: Some(submit),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json: json,
        };
        async {
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout + Duration::from_secs(5));
            taskwire::propagation::inject_metadata(request.metadata_mut());
            let response = self.tasks.clone().submit_and_wait(request).await;
            let mut stream = traced(response)?.into_inner();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| tonic::Status::internal("the gateway closed the stream early"))?;
            Ok(Pending { first, stream })
        }
        .instrument(span)
        .await
    }

    /// Submits `task` with typed arguments and waits up to `timeout` for its typed result, in
    /// one call: Celery's `delay(...).get()`.
    pub async fn run<O: prost::Message + Default>(
        &self,
        task: &str,
        args: &impl prost::Message,
        options: SubmitOptions,
        timeout: Duration,
    ) -> Result<O, Error> {
        self.run_described(task, "", args, options, timeout).await
    }

    /// [`Client::run`] with the producer's schema fingerprint, checked as in
    /// [`Client::submit_described`]. Generated stubs call this.
    pub async fn run_described<O: prost::Message + Default>(
        &self,
        task: &str,
        descriptor_hash: &str,
        args: &impl prost::Message,
        options: SubmitOptions,
        timeout: Duration,
    ) -> Result<O, Error> {
        let submit = v1::SubmitRequest {
            task: task.to_owned(),
            args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
            options: Some(options.into_proto()),
            descriptor_hash: descriptor_hash.to_owned(),
        };
        let pending = self.submit_and_wait_request(submit, timeout, false).await?;
        outcome(pending.finish().await?)
    }

    /// The current state of a task (and its result as JSON when `json`).
    pub async fn get(&self, id: &str, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::GetRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(self.tasks.clone().get(request).await?.into_inner())
    }

    /// Waits on the gateway until the task has a result, at most `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::WaitRequest {
            task_id: id.to_owned(),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json: json,
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + Duration::from_secs(5));
        Ok(self.tasks.clone().wait(request).await?.into_inner())
    }

    /// Stores many tasks with batched publishes; the answer has one result per request, in
    /// order (an id, or why that one was refused). Build requests with [`request`] or
    /// [`request_json`]. A gateway takes at most [`SUBMIT_MANY_CALL`] tasks in one call, so
    /// larger batches go in several calls, one after the other; if one fails, the tasks of the
    /// calls before it are stored and the error says how many.
    pub async fn submit_many(
        &self,
        requests: impl IntoIterator<Item = v1::SubmitRequest, IntoIter: Send + 'static>,
    ) -> Result<v1::SubmitManyResponse, Error> {
        let requests: Vec<v1::SubmitRequest> = requests.into_iter().collect();
        let mut answer = v1::SubmitManyResponse::default();
        for chunk in requests.chunks(SUBMIT_MANY_CALL) {
            let sent = chunk.len();
            let stream = futures::stream::iter(chunk.to_vec());
            let part = match self.tasks.clone().submit_many(stream).await {
                Ok(part) => part.into_inner(),
                Err(status) if answer.results.is_empty() => return Err(status.into()),
                Err(status) => {
                    return Err(Error::Status(tonic::Status::new(
                        status.code(),
                        format!(
                            "{} (the first {} tasks were answered: {} stored, {} refused)",
                            status.message(),
                            answer.results.len(),
                            answer.submitted,
                            answer.refused
                        ),
                    )));
                }
            };
            let read = part.results.len();
            answer.submitted += part.submitted;
            answer.refused += part.refused;
            answer.results.extend(part.results);
            if read < sent {
                // The gateway takes fewer in one call than this client thought: the rest are
                // refused here, before anything of them is stored.
                for _ in read..sent {
                    answer.results.push(v1::SubmitManyResult {
                        code: tonic::Code::ResourceExhausted as i32,
                        error: format!(
                            "not sent: the gateway took {read} tasks in one call; submit the rest again"
                        ),
                        ..Default::default()
                    });
                    answer.refused += 1;
                }
                let rest = requests.len() - answer.results.len();
                for _ in 0..rest {
                    answer.results.push(v1::SubmitManyResult {
                        code: tonic::Code::ResourceExhausted as i32,
                        error: "not sent: an earlier call of the batch was cut short".into(),
                        ..Default::default()
                    });
                    answer.refused += 1;
                }
                break;
            }
        }
        Ok(answer)
    }

    /// Follows a task: its current state first, then every change until its final state.
    pub async fn watch(&self, id: &str, json: bool) -> Result<Watch, Error> {
        let request = v1::WatchRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(Watch {
            stream: self.tasks.clone().watch(request).await?.into_inner(),
        })
    }

    /// Creates a schedule: `schedule.task` submitted with `schedule.args` on every tick of its
    /// cron expression or interval, by the broker.
    pub async fn create_schedule(&self, schedule: v1::Schedule) -> Result<v1::Schedule, Error> {
        let request = v1::CreateScheduleRequest {
            schedule: Some(schedule),
        };
        Ok(self.schedules.clone().create(request).await?.into_inner())
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<v1::Schedule>, Error> {
        Ok(self
            .schedules
            .clone()
            .list(v1::ListSchedulesRequest {})
            .await?
            .into_inner()
            .schedules)
    }

    /// One schedule.
    pub async fn schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::GetScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().get(request).await?.into_inner())
    }

    /// Stops a schedule until [`Client::resume_schedule`].
    pub async fn pause_schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::PauseScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().pause(request).await?.into_inner())
    }

    /// Starts a paused schedule again.
    pub async fn resume_schedule(&self, name: &str) -> Result<v1::Schedule, Error> {
        let request = v1::ResumeScheduleRequest {
            name: name.to_owned(),
        };
        Ok(self.schedules.clone().resume(request).await?.into_inner())
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let request = v1::DeleteScheduleRequest {
            name: name.to_owned(),
        };
        self.schedules.clone().delete(request).await?;
        Ok(())
    }

    /// Cancels a task that has not finished.
    pub async fn cancel(&self, id: &str) -> Result<TaskInfo, Error> {
        let request = v1::CancelRequest {
            task_id: id.to_owned(),
        };
        Ok(self.tasks.clone().cancel(request).await?.into_inner())
    }

    /// Dead letters, oldest first; `task` empty means every task type.
    pub async fn dead_letters(&self, task: &str, limit: u32) -> Result<Vec<v1::DeadLetter>, Error> {
        let request = v1::ListDeadLettersRequest {
            task: task.to_owned(),
            limit,
        };
        Ok(self
            .admin
            .clone()
            .list_dead_letters(request)
            .await?
            .into_inner()
            .dead_letters)
    }

    /// Puts dead tasks back in line: these ids, or with `all` every dead task of `task`.
    pub async fn replay_dead_letters(
        &self,
        task_ids: Vec<String>,
        task: &str,
        all: bool,
    ) -> Result<Vec<String>, Error> {
        let request = v1::ReplayDeadLettersRequest {
            task_ids,
            task: task.to_owned(),
            all,
        };
        Ok(self
            .admin
            .clone()
            .replay_dead_letters(request)
            .await?
            .into_inner()
            .task_ids)
    }

    /// Deletes dead letters; `task` empty means all. Returns how many.
    pub async fn purge_dead_letters(&self, task: &str) -> Result<u64, Error> {
        let request = v1::PurgeDeadLettersRequest {
            task: task.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .purge_dead_letters(request)
            .await?
            .into_inner()
            .purged)
    }

    /// The cluster-wide limits in force for a task type.
    pub async fn task_limits(&self, task: &str) -> Result<v1::TaskLimitsResponse, Error> {
        let request = v1::GetTaskLimitsRequest {
            task: task.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .get_task_limits(request)
            .await?
            .into_inner())
    }

    /// Overrides a task type's declared limits; `None` drops the override.
    pub async fn set_task_limits(
        &self,
        task: &str,
        limits: Option<v1::TaskLimits>,
    ) -> Result<v1::TaskLimitsResponse, Error> {
        let request = v1::SetTaskLimitsRequest {
            task: task.to_owned(),
            clear: limits.is_none(),
            limits,
        };
        Ok(self
            .admin
            .clone()
            .set_task_limits(request)
            .await?
            .into_inner())
    }

    /// The workers alive now.
    pub async fn workers(&self) -> Result<Vec<v1::WorkerInfo>, Error> {
        Ok(self
            .admin
            .clone()
            .list_workers(v1::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers)
    }

    /// Every task type's queues, per priority.
    pub async fn queues(&self) -> Result<Vec<v1::QueueInfo>, Error> {
        Ok(self
            .admin
            .clone()
            .list_queues(v1::ListQueuesRequest {})
            .await?
            .into_inner()
            .queues)
    }

    /// A task's state changes, oldest first, and its result.
    pub async fn task_history(&self, id: &str) -> Result<v1::GetTaskHistoryResponse, Error> {
        let request = v1::GetTaskHistoryRequest {
            task_id: id.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .get_task_history(request)
            .await?
            .into_inner())
    }

    /// The task types the gateway knows.
    pub async fn task_types(&self) -> Result<Vec<TaskType>, Error> {
        Ok(self
            .admin
            .clone()
            .list_task_types(v1::ListTaskTypesRequest {})
            .await?
            .into_inner()
            .task_types)
    }
}

/// The producer's span of a submission: the root of the task's trace when the caller has none.
fn submit_span(task: &str, method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "submit",
        otel.name = %format!("submit {task}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "taskwire.v1.Tasks",
        rpc.method = method,
        taskwire.task.name = %task,
    )
}

/// Marks the current span as failed when the call failed.
fn traced<T>(response: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
    if let Err(status) = &response {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", status.message());
    }
    response
}

/// Most tasks a gateway takes in one SubmitMany call; [`Client::submit_many`] splits larger
/// batches.
pub const SUBMIT_MANY_CALL: usize = 10_000;

/// A submission of typed arguments, for [`Client::submit_many`].
pub fn request(
    task: &str,
    args: &impl prost::Message,
    options: SubmitOptions,
) -> v1::SubmitRequest {
    v1::SubmitRequest {
        task: task.to_owned(),
        args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
        options: Some(options.into_proto()),
        ..Default::default()
    }
}

/// A submission of arguments as proto3 JSON, for [`Client::submit_many`].
pub fn request_json(task: &str, json: &str, options: SubmitOptions) -> v1::SubmitRequest {
    v1::SubmitRequest {
        task: task.to_owned(),
        args: Some(v1::submit_request::Args::ArgsJson(json.to_owned())),
        options: Some(options.into_proto()),
        ..Default::default()
    }
}

/// Whether a state is final: the task will not change any more.
pub fn is_final(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
    )
}

/// The changes of a task, from [`Client::watch`] or [`TaskHandle::watch`].
#[derive(Debug)]
pub struct Watch {
    stream: tonic::Streaming<TaskInfo>,
}

impl Watch {
    /// The next state or progress report; `None` after the final state.
    pub async fn next(&mut self) -> Result<Option<TaskInfo>, Error> {
        Ok(self.stream.message().await?)
    }
}

/// A task submitted with [`Client::submit_and_wait`]: stored, its final state on the way.
#[derive(Debug)]
pub struct Pending {
    first: TaskInfo,
    stream: tonic::Streaming<TaskInfo>,
}

impl Pending {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.first.task_id
    }

    /// The state when the task was stored (queued, or final for a repeated idempotency key).
    pub fn first(&self) -> &TaskInfo {
        &self.first
    }

    /// Waits for the final state; a task still running at the timeout is a `DEADLINE_EXCEEDED`
    /// status.
    pub async fn finish(mut self) -> Result<TaskInfo, Error> {
        let last = if !is_final(self.first.state()) {
            self.stream.message().await?.ok_or_else(|| {
                Error::Status(tonic::Status::internal(
                    "the gateway closed the stream early",
                ))
            })?
        } else {
            self.first
        };
        // Read to the end of the stream (its trailers), so that it closes cleanly instead of
        // being reset.
        while self.stream.message().await?.is_some() {}
        Ok(last)
    }
}

/// The typed outcome of a finished task.
fn outcome<O: prost::Message + Default>(info: TaskInfo) -> Result<O, Error> {
    let id = info.task_id.clone();
    match info.state() {
        TaskState::Succeeded => {
            O::decode(info.result.as_slice()).map_err(|source| Error::Decode { id, source })
        }
        TaskState::Cancelled => Err(Error::Cancelled { id }),
        TaskState::Expired => Err(Error::Expired { id }),
        _ => {
            let failure = info.error.unwrap_or_default();
            Err(Error::TaskFailed {
                id,
                message: failure.message,
                retryable: failure.retryable,
            })
        }
    }
}

/// A submitted task whose result decodes as `O`.
pub struct TaskHandle<O> {
    client: Client,
    id: String,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

impl<O> Clone for TaskHandle<O> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            id: self.id.clone(),
            output: PhantomData,
        }
    }
}

impl<O: prost::Message + Default> TaskHandle<O> {
    /// A handle on a task submitted earlier.
    pub fn from_id(client: Client, id: impl Into<String>) -> Self {
        Self {
            client,
            id: id.into(),
            output: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The task's current state.
    pub async fn state(&self) -> Result<TaskState, Error> {
        Ok(self.client.get(&self.id, false).await?.state())
    }

    /// Everything the gateway knows about the task now.
    pub async fn info(&self) -> Result<TaskInfo, Error> {
        self.client.get(&self.id, false).await
    }

    /// Waits up to `timeout` for the result. A failed or cancelled task is an error; a task
    /// still running after `timeout` is a `DEADLINE_EXCEEDED` status.
    pub async fn get(&self, timeout: Duration) -> Result<O, Error> {
        outcome(self.client.wait(&self.id, timeout, false).await?)
    }

    /// Cancels the task if it has not finished.
    pub async fn cancel(&self) -> Result<(), Error> {
        self.client.cancel(&self.id).await.map(|_| ())
    }

    /// Follows the task's state and progress until it ends.
    pub async fn watch(&self) -> Result<Watch, Error> {
        self.client.watch(&self.id, false).await
    }
}
