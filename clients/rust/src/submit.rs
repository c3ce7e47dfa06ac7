//! Submitting tasks: one, one and waiting, many at once.

use std::marker::PhantomData;
use std::time::Duration;

use tracing::Instrument as _;

use taskwire::v1;

use crate::{Client, Error, Pending, SUBMIT_MANY_CALL, SubmitOptions, TaskHandle, outcome};

/// The producer's span of a submission: the root of the task's trace when the caller has none.
pub(crate) fn submit_span(task: &str, method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "submit",
        otel.name = %format!("submit {task}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "taskwire.v1.Tasks",
        rpc.method = method,
        taskwire.task.name = %task,
    )
}

/// Marks the current span as failed when the call failed.
pub(crate) fn traced<T>(response: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
    if let Err(status) = &response {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", status.message());
    }
    response
}

impl Client {
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
        self.submit_and_wait_request(submit, timeout, json, false)
            .await
    }

    async fn submit_and_wait_request(
        &self,
        submit: v1::SubmitRequest,
        timeout: Duration,
        json: bool,
        final_only: bool,
    ) -> Result<Pending, Error> {
        let span = submit_span(&submit.task, "SubmitAndWait");
        let request = v1::SubmitAndWaitRequest {
            submit: Some(submit),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json: json,
            final_only,
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
        // Only the outcome is wanted: one answer, not the queued state first.
        let pending = self
            .submit_and_wait_request(submit, timeout, false, true)
            .await?;
        outcome(pending.finish().await?)
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
}
