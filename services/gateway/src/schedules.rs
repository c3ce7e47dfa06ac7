//! `taskwire.v1.Schedules`: cron and interval schedules kept by the broker.
//!
//! A schedule is two things: its definition in the `TASKWIRE_SCHEDULES` bucket (what List and
//! Get read, and what Resume brings back), and while it is active, one message schedule on
//! `taskwire.schedules.<name>` in the tasks stream, which the server turns into a task on every
//! tick. No gateway takes part in firing, so a tick fires once however many gateways run, and a
//! restart of any process changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire::task::Name;
use taskwire::v1;
use taskwire_protocol::{self as broker, subject};
use tonic::{Request, Response, Status};

use crate::cron::CronSchedule;
use crate::submit::{overrides, publish_error};
use crate::{Error, Gateway, payload};

/// The longest schedule name.
const MAX_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::BadRequest(format!(
            "schedule name {name:?} must be 1 to {MAX_NAME} letters, digits, `-` or `_`"
        )));
    }
    Ok(())
}

/// How many next fire times an answer shows.
const NEXT_FIRES: usize = 5;

/// The `Nats-Schedule` value of a schedule's timing, and for a cron expression, the expression
/// checked in its time zone (`time_zone`, empty for UTC).
fn spec(
    when: Option<&v1::schedule::When>,
    time_zone: &str,
) -> Result<(String, Option<CronSchedule>), Error> {
    let spec = timing(when)?;
    if spec.starts_with("@every") {
        if !time_zone.is_empty() {
            return Err(Error::BadRequest(
                "time_zone applies to cron schedules only; leave it unset with every".into(),
            ));
        }
        return Ok((spec, None));
    }
    let zone = if time_zone.is_empty() {
        chrono_tz::Tz::UTC
    } else {
        crate::cron::time_zone(time_zone).map_err(Error::BadRequest)?
    };
    let cron = CronSchedule::parse(&spec, zone).map_err(Error::BadRequest)?;
    Ok((spec, Some(cron)))
}

/// The `Nats-Schedule` value of a schedule's timing.
fn timing(when: Option<&v1::schedule::When>) -> Result<String, Error> {
    match when {
        None => Err(Error::BadRequest(
            "the schedule has no timing: set cron (e.g. \"0 * * * *\") or every (e.g. 60s)".into(),
        )),
        Some(v1::schedule::When::Every(every)) => {
            let d = Duration::try_from(*every).map_err(|_| {
                Error::BadRequest("every is negative; give an interval of at least 1s".into())
            })?;
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err(Error::BadRequest(format!(
                    "every is {}; give whole seconds, at least 1s",
                    humantime::format_duration(d)
                )));
            }
            Ok(format!("@every {}s", d.as_secs()))
        }
        Some(v1::schedule::When::Cron(cron)) => {
            let cron = cron.trim();
            let predefined = [
                "@yearly",
                "@annually",
                "@monthly",
                "@weekly",
                "@daily",
                "@midnight",
                "@hourly",
            ];
            if cron.starts_with('@') {
                if predefined.contains(&cron) {
                    return Ok(cron.to_owned());
                }
                return Err(Error::BadRequest(format!(
                    "cron {cron:?} is not one of {}",
                    predefined.join(", ")
                )));
            }
            let fields: Vec<&str> = cron.split_whitespace().collect();
            match fields.len() {
                // Minute first: the broker's cron counts seconds too.
                5 => Ok(format!("0 {}", fields.join(" "))),
                6 => Ok(fields.join(" ")),
                n => Err(Error::BadRequest(format!(
                    "cron {cron:?} has {n} fields; give five (minute hour day-of-month month day-of-week) or six (seconds first)"
                ))),
            }
        }
    }
}

/// A schedule checked and ready to publish: the message schedule's headers and body.
struct Checked {
    spec: String,
    headers: async_nats::HeaderMap,
    args: Bytes,
}

impl Gateway {
    /// Checks a schedule: its name, task, arguments, timing and options.
    async fn check_schedule(&self, schedule: &v1::Schedule) -> Result<Checked, Error> {
        check_name(&schedule.name)?;
        let name = Name::parse(&schedule.task).map_err(Error::InvalidName)?;
        let task_type = self.registry.get(&name).await?;
        let args = match &schedule.args {
            Some(v1::schedule::Args::ArgsProto(bytes)) => {
                payload::from_proto(
                    &task_type.input,
                    Bytes::from(bytes.clone()),
                    self.max_payload,
                )?
                .0
            }
            Some(v1::schedule::Args::ArgsJson(json)) => {
                payload::from_json(&task_type.input, json, self.max_payload)?.0
            }
            None => return Err(Error::MissingArgs),
        };
        let (spec, _) = spec(schedule.when.as_ref(), &schedule.time_zone)?;
        let options = schedule.options.clone().unwrap_or_default();
        for (set, field) in [
            (!options.idempotency_key.is_empty(), "idempotency_key"),
            (options.not_before.is_some(), "not_before"),
            (options.countdown.is_some(), "countdown"),
            (options.expires_at.is_some(), "expires_at"),
            (options.ttl.is_some(), "ttl"),
        ] {
            if set {
                return Err(Error::BadRequest(format!(
                    "{field} does not apply to a schedule's tasks; leave it unset"
                )));
            }
        }
        let priority = v1::Priority::try_from(options.priority).map_err(|_| {
            Error::BadRequest(format!(
                "priority {} is not a priority; use 1 (high), 2 (normal) or 3 (low)",
                options.priority
            ))
        })?;
        let headers = broker::schedule_headers(
            &name,
            &schedule.name,
            &spec,
            (!schedule.time_zone.is_empty()).then_some(schedule.time_zone.as_str()),
            priority,
            &overrides(&options, self.broker.result_ttl)?,
        );
        if !self.broker.message_schedules {
            return Err(Error::NoSchedules);
        }
        Ok(Checked {
            spec,
            headers,
            args,
        })
    }

    async fn create_schedule(&self, schedule: v1::Schedule) -> Result<v1::Schedule, Error> {
        let checked = self.check_schedule(&schedule).await?;
        self.check_connected()?;

        let mut stored = schedule;
        stored.paused = false;
        stored.created_at = Some(SystemTime::now().into());
        stored.next_fires.clear();
        match self
            .broker
            .schedules
            .create(&stored.name, stored.encode_to_vec().into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                return Err(Error::ScheduleExists(stored.name));
            }
            Err(e) => return Err(self.broker_error(e)),
        }
        let spec = checked.spec.clone();
        if let Err(e) = self.start_schedule(&stored.name, checked).await {
            // Nothing half made. A publish that timed out may still have been stored: the
            // message schedule goes first, and the definition only once it surely has, so
            // that nothing can fire without a definition to delete it by.
            match self.stop_schedule(&stored.name).await {
                Ok(()) => {
                    if let Err(purge) = self.broker.schedules.purge(&stored.name).await {
                        tracing::warn!(schedule = stored.name, error = %purge, "the definition of a schedule that did not start is left; delete it");
                    }
                }
                Err(stop) => {
                    tracing::warn!(schedule = stored.name, error = %stop, "a schedule that may have started is kept; delete it");
                }
            }
            return Err(e);
        }
        tracing::info!(
            schedule = stored.name,
            task = stored.task,
            spec,
            time_zone = stored.time_zone,
            "schedule created"
        );
        Ok(self.with_next_fires(stored).await)
    }

    /// The schedule with the next times it fires: a cron expression's from now on in its time
    /// zone; an interval's from when its message schedule was stored (created or resumed), as
    /// the broker counts it. None while paused, or when that cannot be read.
    pub(crate) async fn with_next_fires(&self, mut schedule: v1::Schedule) -> v1::Schedule {
        schedule.next_fires.clear();
        if schedule.paused {
            return schedule;
        }
        let Ok((spec, cron)) = spec(schedule.when.as_ref(), &schedule.time_zone) else {
            return schedule;
        };
        let now = chrono::Utc::now();
        let fires: Vec<SystemTime> = match cron {
            Some(cron) => cron
                .next_fires(now, NEXT_FIRES)
                .into_iter()
                .map(SystemTime::from)
                .collect(),
            None => {
                let every = spec
                    .strip_prefix("@every ")
                    .and_then(|s| s.strip_suffix('s'))
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .filter(|d| !d.is_zero());
                let stored = self
                    .broker
                    .tasks
                    .get_last_raw_message_by_subject(&subject::schedule(&schedule.name))
                    .await
                    .ok()
                    .map(|m| SystemTime::from(m.time));
                match (every, stored) {
                    (Some(every), Some(stored)) => {
                        let passed = SystemTime::now().duration_since(stored).unwrap_or_default();
                        let ticks = passed.as_secs() / every.as_secs() + 1;
                        (0..NEXT_FIRES as u64)
                            .map(|k| stored + every * u32::try_from(ticks + k).unwrap_or(u32::MAX))
                            .collect()
                    }
                    _ => Vec::new(),
                }
            }
        };
        schedule.next_fires = fires.into_iter().map(Into::into).collect();
        schedule
    }

    /// Puts the schedule's message schedule in the tasks stream.
    async fn start_schedule(&self, name: &str, checked: Checked) -> Result<(), Error> {
        let Checked {
            spec,
            headers,
            args,
        } = checked;
        let published = self
            .broker
            .jetstream
            .publish_with_headers(subject::schedule(name), headers, args)
            .await
            .map_err(publish_error)?
            .await;
        match published {
            Ok(_) => Ok(()),
            // Refused for good (an expression the server does not take): a caller's error.
            Err(e) if taskwire_protocol::permanent_refusal(&e).is_some() => Err(Error::BadRequest(
                format!("the broker refused the schedule {spec:?}: {e}; check the cron expression"),
            )),
            Err(e) => Err(publish_error(e)),
        }
    }

    /// Removes the schedule's message schedule from the tasks stream.
    async fn stop_schedule(&self, name: &str) -> Result<(), Error> {
        self.broker
            .tasks
            .purge()
            .filter(subject::schedule(name))
            .await
            .map_err(|e| self.broker_error(e))?;
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<(v1::Schedule, u64), Error> {
        check_name(name)?;
        self.check_connected()?;
        let entry = self
            .broker
            .schedules
            .entry(name)
            .await
            .map_err(|e| self.broker_error(e))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            .ok_or_else(|| Error::NoSchedule(name.to_owned()))?;
        let schedule = v1::Schedule::decode(entry.value)
            .map_err(|e| Error::Broker(format!("schedule {name} does not decode: {e}")))?;
        Ok((schedule, entry.revision))
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<v1::Schedule, Error> {
        let (mut schedule, revision) = self.get_schedule(name).await?;
        if schedule.paused == paused {
            return Ok(schedule);
        }
        let checked = if paused {
            None
        } else {
            Some(self.check_schedule(&schedule).await?)
        };
        // The definition changes first, by compare-and-set: of two changes at once only one
        // goes on to touch the message schedule.
        schedule.paused = paused;
        let changed = self
            .broker
            .schedules
            .update(name, schedule.encode_to_vec().into(), revision)
            .await
            .map_err(|e| match e.kind() {
                async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                    Error::Conflict(format!(
                        "schedule {name} changed while it was being {}; try again",
                        if paused { "paused" } else { "resumed" }
                    ))
                }
                _ => self.broker_error(e),
            })?;
        let applied = match checked {
            None => self.stop_schedule(name).await,
            Some(checked) => match self.start_schedule(name, checked).await {
                // A delete (or pause) that came in between must not leave it firing.
                Ok(()) => match self.get_schedule(name).await {
                    Ok((now, _)) if !now.paused => Ok(()),
                    Ok(_) | Err(Error::NoSchedule(_)) => self.stop_schedule(name).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        if let Err(e) = applied {
            // Back to what the broker does: the definition says what fires.
            schedule.paused = !paused;
            if let Err(revert) = self
                .broker
                .schedules
                .update(name, schedule.encode_to_vec().into(), changed)
                .await
            {
                tracing::warn!(schedule = name, error = %revert, "could not set the definition back after a failed change");
            }
            return Err(e);
        }
        tracing::info!(schedule = name, paused, "schedule changed");
        Ok(self.with_next_fires(schedule).await)
    }

    async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        self.get_schedule(name).await?;
        self.stop_schedule(name).await?;
        self.broker
            .schedules
            .purge(name)
            .await
            .map_err(|e| self.broker_error(e))?;
        // A resume that started it again in between sees the definition gone and stops it
        // too; stopping once more here closes the other order.
        self.stop_schedule(name).await?;
        tracing::info!(schedule = name, "schedule deleted");
        Ok(())
    }

    pub(crate) async fn list_schedules(&self) -> Result<Vec<v1::Schedule>, Error> {
        self.check_connected()?;
        let mut names = Vec::new();
        let mut keys = self
            .broker
            .schedules
            .keys()
            .await
            .map_err(|e| self.broker_error(e))?;
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| self.broker_error(e))?);
        }
        names.sort();
        let mut schedules = Vec::with_capacity(names.len());
        for name in names {
            match self.get_schedule(&name).await {
                Ok((schedule, _)) => schedules.push(self.with_next_fires(schedule).await),
                // Deleted in between.
                Err(Error::NoSchedule(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(schedules)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SchedulesService {
    gateway: Arc<Gateway>,
}

impl SchedulesService {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl v1::schedules_server::Schedules for SchedulesService {
    async fn create(
        &self,
        request: Request<v1::CreateScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let schedule = request
            .into_inner()
            .schedule
            .ok_or_else(|| Error::BadRequest("the request has no schedule".into()))?;
        Ok(Response::new(self.gateway.create_schedule(schedule).await?))
    }

    async fn list(
        &self,
        _request: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        let schedules = self.gateway.list_schedules().await?;
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn get(
        &self,
        request: Request<v1::GetScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let (schedule, _) = self
            .gateway
            .get_schedule(&request.into_inner().name)
            .await?;
        Ok(Response::new(self.gateway.with_next_fires(schedule).await))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, Status> {
        self.gateway
            .delete_schedule(&request.into_inner().name)
            .await?;
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn pause(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.gateway.set_paused(&name, true).await?))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.gateway.set_paused(&name, false).await?))
    }
}
