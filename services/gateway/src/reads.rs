//! A task's state as the broker keeps it (its result, its last event, its delayed message),
//! and the waits and watches that follow it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::connection::State;

use async_nats::jetstream::consumer;
use futures::StreamExt as _;
use prost_reflect::{DynamicMessage, SerializeOptions};
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_protocol::{self as broker, subject};
use tonic::Status;

use crate::submit::micros;
use crate::waiters::Waiting;
use crate::{Error, Gateway, MAX_WAIT};

pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn wait_timeout(timeout: Option<prost_types::Duration>) -> Duration {
    timeout
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT)
}

pub(crate) type TaskInfoStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::TaskInfo, Status>> + Send>>;

impl Gateway {
    /// Answers UNAVAILABLE at once while NATS is down, rather than queueing the call behind a
    /// reconnect.
    pub(crate) fn check_connected(&self) -> Result<(), Error> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(Error::BrokerDown(format!("connection is {state}"))),
        }
    }

    /// The stored result of a task, if it has one; EXPIRED when it had one that ran out.
    pub(crate) async fn result(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        match self
            .broker
            .last_message(broker::RESULTS_STREAM, &subject::result_of(id))
            .await
        {
            Ok(Some(m)) if broker::is_expiry_marker(&m.headers) => {
                Err(Error::Expired(id.to_string()))
            }
            Ok(found) => Ok(found.map(|m| broker::task_info(id, &m.headers, &m.payload, m.time))),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// The last state change of a task, if any; for a delayed task whose events ran out before
    /// its time (a delay longer than the events are kept), the broker's schedule of it.
    pub(crate) async fn last_event(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        match self
            .lookup(broker::EVENTS_STREAM, &subject::events_of(id), id)
            .await?
        {
            Some(info) => Ok(Some(info)),
            None => self.delayed(id).await,
        }
    }

    /// A delayed task the broker still holds: scheduled until its time.
    pub(crate) async fn delayed(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let held = match self
            .broker
            .tasks
            .get_last_raw_message_by_subject(&subject::delayed(id))
            .await
        {
            Ok(held) => held,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            // No answer from the leader (one is being elected): try again.
            Err(e) if e.kind() == LastRawMessageErrorKind::Other => {
                return Err(Error::BrokerDown(format!(
                    "{e} (a stream leader election?)"
                )));
            }
            Err(e) => return Err(self.broker_error(e)),
        };
        let mut headers = held.headers;
        headers.insert(
            broker::header::STATE,
            broker::state_name(TaskState::Scheduled),
        );
        if let Some(at) = broker::scheduled_at(&headers) {
            headers.insert(broker::header::NOT_BEFORE, micros(at).to_string().as_str());
        }
        headers.insert(broker::header::ATTEMPT, "0");
        Ok(Some(broker::task_info(
            id,
            &headers,
            &held.payload,
            Some(held.time.into()),
        )))
    }

    pub(crate) async fn lookup(
        &self,
        stream: &str,
        filter: &str,
        id: &Id,
    ) -> Result<Option<v1::TaskInfo>, Error> {
        match self.broker.last_message(stream, filter).await {
            Ok(found) => Ok(found.map(|m| broker::task_info(id, &m.headers, &m.payload, m.time))),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// A read that found no answer: a time-out (no stream leader while one is elected, or the
    /// broker out of reach) is UNAVAILABLE, which clients try again.
    pub(crate) fn read_error(&self, err: async_nats::RequestError) -> Error {
        match err.kind() {
            async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders => {
                Error::BrokerDown(format!("{err} (a stream leader election?)"))
            }
            _ => self.broker_error(err),
        }
    }

    pub(crate) fn broker_error(&self, err: impl std::fmt::Display) -> Error {
        match self.check_connected() {
            Err(down) => down,
            Ok(()) => Error::Broker(err.to_string()),
        }
    }

    pub(crate) async fn state(&self, id: &Id) -> Result<v1::TaskInfo, Error> {
        if let Some(info) = self.result(id).await? {
            return Ok(info);
        }
        self.last_event(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    pub(crate) async fn wait(&self, id: &Id, timeout: Duration) -> Result<v1::TaskInfo, Error> {
        self.check_connected()?;
        // Register before looking, so a result stored in between is not missed.
        let results = self.waiters.register(id).await?;
        if let Some(info) = self.result(id).await? {
            return Ok(info);
        }
        // A result published just before our subscription can still be on its way into the
        // stream when we looked: look again soon.
        self.wait_on(results, id, timeout, Duration::from_millis(20))
            .await
    }

    /// Waits for the result on a subscription to its subject, looking at the stream now and
    /// then (first after `recheck`) in case a message was missed.
    pub(crate) async fn wait_on(
        &self,
        mut results: Waiting,
        id: &Id,
        timeout: Duration,
        mut recheck: Duration,
    ) -> Result<v1::TaskInfo, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let until = (tokio::time::Instant::now() + recheck).min(deadline);
            match tokio::time::timeout_at(until, results.next()).await {
                Ok(Some(msg)) => {
                    return Ok(broker::task_info(
                        id,
                        &msg.headers.unwrap_or_default(),
                        &msg.payload,
                        Some(std::time::SystemTime::now()),
                    ));
                }
                Ok(None) => return Err(Error::BrokerDown("the result subscription ended".into())),
                Err(_) => {
                    if let Some(info) = self.result(id).await? {
                        return Ok(info);
                    }
                    // Most waits end before the first look again; only a task that takes longer
                    // pays for checking that it exists at all.
                    let pending = self
                        .last_event(id)
                        .await?
                        .ok_or_else(|| Error::NotFound(id.to_string()))?;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::StillRunning {
                            id: id.to_string(),
                            state: broker::state_name(pending.state()),
                            waited: timeout,
                        });
                    }
                    recheck = (recheck * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The task's current state, then each change (running, progress, retrying) until the final
    /// state, which ends the stream. A watcher that joins late starts from the last change.
    pub(crate) async fn watch(
        self: Arc<Self>,
        id: Id,
        json: bool,
    ) -> Result<TaskInfoStream, Error> {
        self.check_connected()?;
        // Register before looking, so a result stored in between is not missed.
        let mut results = self.waiters.register(&id).await?;
        if let Some(info) = self.result(&id).await? {
            let info = self.with_json(info, json).await?;
            return Ok(Box::pin(futures::stream::iter([Ok(info)])));
        }
        if self.last_event(&id).await?.is_none() {
            return Err(Error::NotFound(id.to_string()));
        }
        let consumer = self
            .broker
            .events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject::events_of(&id),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| self.broker_error(e))?;
        let mut events = consumer
            .messages()
            .await
            .map_err(|e| self.broker_error(e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(Duration::from_secs(1));
            recheck.reset();
            let mut delivered = 0;
            loop {
                let last = tokio::select! {
                    () = tx.closed() => return,
                    event = events.next() => match event {
                        Some(Ok(m)) => {
                            delivered = m.info().map_or(delivered, |i| i.stream_sequence);
                            let info = broker::task_info(
                                &id,
                                &m.headers.clone().unwrap_or_default(),
                                &m.payload,
                                Some(SystemTime::now()),
                            );
                            if tx.send(Ok(info)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(task_id = %id, error = %e, "watch interrupted; resuming");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        None => return,
                    },
                    result = results.next() => match result {
                        Some(m) => Ok(broker::task_info(
                            &id,
                            &m.headers.unwrap_or_default(),
                            &m.payload,
                            Some(SystemTime::now()),
                        )),
                        None => Err(Error::BrokerDown("the result subscription ended".into())),
                    },
                    _ = recheck.tick() => match self.result(&id).await {
                        Ok(Some(info)) => Ok(info),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    },
                };
                // Changes stored before the end go out before it.
                let newest = self
                    .broker
                    .last_message(broker::EVENTS_STREAM, &subject::events_of(&id))
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |m| m.sequence);
                while delivered < newest {
                    let Ok(Some(Ok(m))) =
                        tokio::time::timeout(Duration::from_secs(1), events.next()).await
                    else {
                        break;
                    };
                    delivered = m.info().map_or(newest, |i| i.stream_sequence);
                    let info = broker::task_info(
                        &id,
                        &m.headers.clone().unwrap_or_default(),
                        &m.payload,
                        Some(SystemTime::now()),
                    );
                    if tx.send(Ok(info)).await.is_err() {
                        return;
                    }
                }
                let last = match last {
                    Ok(info) => self.with_json(info, json).await.map_err(Status::from),
                    Err(e) => Err(e.into()),
                };
                let _ = tx.send(last).await;
                return;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Renders the result as JSON when asked, with 64-bit integers as numbers.
    pub(crate) async fn with_json(
        &self,
        mut info: v1::TaskInfo,
        include: bool,
    ) -> Result<v1::TaskInfo, Error> {
        if !include || info.state() != TaskState::Succeeded {
            return Ok(info);
        }
        let Ok(name) = Name::parse(&info.task) else {
            return Ok(info);
        };
        let Ok(task_type) = self.registry.get(&name).await else {
            return Ok(info);
        };
        let message = DynamicMessage::decode(task_type.output.clone(), info.result.as_slice())
            .map_err(|e| Error::BadResult(info.task_id.clone(), e.to_string()))?;
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .skip_default_fields(false);
        let mut out = serde_json::Serializer::new(Vec::new());
        message
            .serialize_with_options(&mut out, &options)
            .map_err(|e| Error::BadResult(info.task_id.clone(), e.to_string()))?;
        info.result_json = String::from_utf8_lossy(&out.into_inner()).into_owned();
        Ok(info)
    }
}
