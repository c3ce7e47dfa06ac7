//! Finding tasks among those the broker keeps, and cancelling them in bulk.
//!
//! Nothing is kept for lists alone on the way to success: the tasks not finished are the
//! tasks stream (read a page at a time), the finished ones the results stream, in the order
//! they finished. The few outcomes other than success (failed, cancelled, expired) are also
//! recorded with their state in the subject (`taskwire.outcomes.<state>.<id>.<token>`), so a
//! list of those reads that small stream and never the results of every task that succeeded.
//! A parent that waits for its children has left the tasks stream: its waiting record in the
//! workflows stream stands for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_protocol::{self as broker, ReadFrom, StoredMessage, children, header, subject};

use crate::auth::{Caller, Op, glob_matches};
use crate::cancel::Cancelled;
use crate::{Error, Gateway};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;
/// How many stored records one call reads at most: a filter that matches little answers a
/// short page (with a token to go on) instead of reading the whole broker in one call.
const READ_BUDGET: u64 = 20_000;
/// Records read per round trip.
const BATCH: usize = 256;
/// The filter of a scan of a whole stream: `>`, which nats-server reads without matching it
/// against every subject the stream has (with a million results, a filter such as
/// `taskwire.results.>` costs every batch read a walk over a million subjects).
const WHOLE_STREAM: &str = ">";
/// How much earlier than its result an outcome record may be stored: it is written first, and
/// the result may wait out a short outage.
const RECORD_SLACK: Duration = Duration::from_secs(30);
/// How far the clocks of the gateway that made an id (which holds the submit time) and of
/// nats-server (which stamps what it stores) may differ.
const CLOCK_SLACK: Duration = Duration::from_secs(5);

const OPEN: [TaskState; 5] = [
    TaskState::Queued,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::Retrying,
    TaskState::Waiting,
];
const FINISHED: [TaskState; 4] = [
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Expired,
];

/// A [`v1::TaskFilter`] checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    task: Option<String>,
    states: Vec<TaskState>,
    submitted: Range,
    finished: Range,
    error: Option<String>,
    key: Option<String>,
    workflow: Option<Id>,
    parent: Option<Id>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Range {
    after: Option<SystemTime>,
    before: Option<SystemTime>,
}

impl Range {
    fn parse(
        after: Option<prost_types::Timestamp>,
        before: Option<prost_types::Timestamp>,
        what: &str,
    ) -> Result<Self, Error> {
        let time = |t: prost_types::Timestamp, end: &str| {
            SystemTime::try_from(t).map_err(|_| {
                Error::BadRequest(format!("{what}_{end} is not a time (seconds since 1970)"))
            })
        };
        let range = Self {
            after: after.map(|t| time(t, "after")).transpose()?,
            before: before.map(|t| time(t, "before")).transpose()?,
        };
        if let (Some(a), Some(b)) = (range.after, range.before)
            && a > b
        {
            return Err(Error::BadRequest(format!(
                "{what}_after is later than {what}_before: nothing can match"
            )));
        }
        Ok(range)
    }

    fn holds(&self, at: Option<SystemTime>) -> bool {
        if self.after.is_none() && self.before.is_none() {
            return true;
        }
        let Some(at) = at else { return false };
        self.after.is_none_or(|a| at >= a) && self.before.is_none_or(|b| at <= b)
    }

    fn is_set(&self) -> bool {
        self.after.is_some() || self.before.is_some()
    }
}

impl Filter {
    pub(crate) fn parse(filter: v1::TaskFilter) -> Result<Self, Error> {
        let task = match filter.task.trim() {
            "" => None,
            pattern if pattern.contains('*') => {
                if let Some(bad) = pattern
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '*')))
                {
                    return Err(Error::BadRequest(format!(
                        "task pattern {pattern:?} holds {bad:?}: use a task name's letters, digits, `.`, `_`, `/` and `*`"
                    )));
                }
                Some(pattern.to_owned())
            }
            name => Some(
                Name::parse(name)
                    .map_err(Error::InvalidName)?
                    .as_str()
                    .to_owned(),
            ),
        };
        let mut states = Vec::new();
        for state in filter.states {
            let state = TaskState::try_from(state)
                .ok()
                .filter(|s| *s != TaskState::Unspecified)
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "state {state} is none of queued, scheduled, running, retrying, waiting, succeeded, failed, cancelled or expired"
                    ))
                })?;
            if !states.contains(&state) {
                states.push(state);
            }
        }
        let key = Some(filter.idempotency_key).filter(|k| !k.is_empty());
        if key.is_some() && task.as_deref().is_none_or(|t| t.contains('*')) {
            return Err(Error::BadRequest(
                "an idempotency key names a task of one type: give its task type too".into(),
            ));
        }
        let id = |text: String, what: &str| -> Result<Option<Id>, Error> {
            if text.is_empty() {
                return Ok(None);
            }
            Id::parse(&text)
                .map(Some)
                .map_err(|e| Error::BadRequest(format!("{what} {text:?}: {e}")))
        };
        // `within` counts back from now: the finish time when only finished states are asked
        // for, else the submit time; a bound given in so many words comes first.
        let (mut submitted_after, mut finished_after) =
            (filter.submitted_after, filter.finished_after);
        if let Some(within) = filter.within {
            let within = Duration::try_from(within).map_err(|_| {
                Error::BadRequest(
                    "within is negative: give how long before now, such as 3600 s".into(),
                )
            })?;
            let from = SystemTime::now().checked_sub(within).ok_or_else(|| {
                Error::BadRequest(format!("within {within:?} reaches before 1970"))
            })?;
            let finished_only = !states.is_empty() && states.iter().all(|s| FINISHED.contains(s));
            let bound = if finished_only {
                &mut finished_after
            } else {
                &mut submitted_after
            };
            bound.get_or_insert(from.into());
        }
        Ok(Self {
            task,
            states,
            submitted: Range::parse(submitted_after, filter.submitted_before, "submitted")?,
            finished: Range::parse(finished_after, filter.finished_before, "finished")?,
            error: Some(filter.error_contains.to_lowercase()).filter(|e| !e.is_empty()),
            key,
            workflow: id(filter.workflow_id, "workflow_id")?,
            parent: id(filter.parent_id, "parent_id")?,
        })
    }

    fn wants(&self, state: TaskState) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }

    fn wants_type(&self, task: &str) -> bool {
        self.task.as_deref().is_none_or(|t| glob_matches(t, task))
    }

    /// Whether the tasks not finished can match.
    fn wants_open(&self) -> bool {
        !self.finished.is_set() && self.error.is_none() && OPEN.iter().any(|s| self.wants(*s))
    }

    /// Whether only outcomes other than success can match: those the outcome records hold.
    /// An error text asks for them too: a task that succeeded has no error.
    fn only_unsuccessful(&self) -> bool {
        let asked = !self.states.is_empty()
            && !self.wants(TaskState::Succeeded)
            && FINISHED.iter().any(|s| self.wants(*s));
        asked || self.states.is_empty() && self.error.is_some()
    }

    /// Where a scan starts: at `from`, or (0) at the earliest time a match can have been
    /// stored.
    fn scan_start(&self, from: u64, stream: &str) -> ReadFrom {
        let slack = if stream == broker::OUTCOMES_STREAM {
            RECORD_SLACK
        } else {
            CLOCK_SLACK
        };
        if from > 0 {
            return ReadFrom::Sequence(from);
        }
        let earliest = self
            .finished
            .after
            .into_iter()
            .chain(self.submitted.after)
            .max()
            .map(|t| t.checked_sub(slack).unwrap_or(UNIX_EPOCH));
        match earliest {
            Some(at) => ReadFrom::Time(at),
            None => ReadFrom::Sequence(1),
        }
    }

    /// Whether a finished task stored at `time` lies past every match: stores are in time
    /// order, so past the finish bound nothing more can match.
    fn past_end(&self, time: Option<SystemTime>) -> bool {
        match (self.finished.before, time) {
            (Some(end), Some(at)) => at > end + RECORD_SLACK,
            _ => false,
        }
    }

    fn keeps(&self, info: &v1::TaskInfo) -> bool {
        let time =
            |t: &Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
        let finished = FINISHED.contains(&info.state());
        self.wants(info.state())
            && self.wants_type(&info.task)
            && self.submitted.holds(time(&info.submitted_at))
            && (!self.finished.is_set() || finished && self.finished.holds(time(&info.updated_at)))
            && self.error.as_deref().is_none_or(|text| {
                info.error
                    .as_ref()
                    .is_some_and(|e| e.message.to_lowercase().contains(text))
            })
    }
}

/// Where a list goes on: which part of the broker, and from where in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// The n-th of the tasks the filter names (by key, workflow or parent).
    Named(u64),
    /// The tasks stream, from this sequence; then, when the waiting records were read before
    /// it, those stored since, from the second sequence.
    Open(u64, Option<u64>),
    /// The parents waiting for their children, from this sequence of the workflows stream.
    Waiting(u64),
    /// The waiting records stored while the tasks stream was read, from this sequence.
    Late(u64),
    /// The results stream, from this sequence.
    Finished(u64),
    /// The outcome records, from this sequence.
    Outcomes(u64),
}

impl Cursor {
    fn parse(token: &str) -> Result<Option<Self>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            Error::BadRequest(format!(
                "page_token {token:?} is none this gateway gave: pass next_page_token as it came, or none for the first page"
            ))
        };
        let (part, at) = token.split_once(':').ok_or_else(bad)?;
        let (at, then) = match at.split_once(':') {
            Some((at, then)) => (at, Some(then.parse::<u64>().map_err(|_| bad())?)),
            None => (at, None),
        };
        let at: u64 = at.parse().map_err(|_| bad())?;
        if then.is_some() && part != "open" {
            return Err(bad());
        }
        Ok(Some(match part {
            "named" => Self::Named(at),
            "open" => Self::Open(at, then),
            "waiting" => Self::Waiting(at),
            "late" => Self::Late(at),
            "finished" => Self::Finished(at),
            "outcomes" => Self::Outcomes(at),
            _ => return Err(bad()),
        }))
    }

    fn token(self) -> String {
        match self {
            Self::Named(n) => format!("named:{n}"),
            Self::Open(n, None) => format!("open:{n}"),
            Self::Open(n, Some(then)) => format!("open:{n}:{then}"),
            Self::Waiting(n) => format!("waiting:{n}"),
            Self::Late(n) => format!("late:{n}"),
            Self::Finished(n) => format!("finished:{n}"),
            Self::Outcomes(n) => format!("outcomes:{n}"),
        }
    }
}

/// How a read of the waiting records stopped: the page was done (go on from here), or it read
/// them all (a later read of those stored since starts here).
enum Read {
    Paused(u64),
    Ended(u64),
}

/// One page of a list.
pub(crate) struct Page {
    pub(crate) tasks: Vec<v1::TaskInfo>,
    pub(crate) next: Option<String>,
    pub(crate) examined: u64,
}

impl Page {
    /// Whether this call has done its part: the page is full, or its reads are spent.
    fn is_done(&self, size: usize) -> bool {
        self.tasks.len() >= size || self.examined >= READ_BUDGET
    }
}

/// A read of one stream's messages on a subject, in order, a batch per round trip; each
/// message it gives counts as examined. It ends at the stream's end, or past the last time a
/// finished task can match.
struct Scan<'a> {
    stream: &'static str,
    subject: &'a str,
    filter: &'a Filter,
    start: ReadFrom,
    batch: std::collections::VecDeque<StoredMessage>,
    ended: bool,
}

impl<'a> Scan<'a> {
    fn new(stream: &'static str, subject: &'a str, filter: &'a Filter, from: u64) -> Self {
        Self {
            stream,
            subject,
            filter,
            start: filter.scan_start(from, stream),
            batch: Default::default(),
            ended: false,
        }
    }

    async fn next(
        &mut self,
        gateway: &Gateway,
        page: &mut Page,
    ) -> Result<Option<StoredMessage>, Error> {
        if self.batch.is_empty() && !self.ended {
            let batch = broker::next_messages(
                &gateway.client,
                self.stream,
                self.subject,
                self.start,
                BATCH,
            )
            .await
            .map_err(|e| gateway.read_error(e))?;
            self.ended = batch.len() < BATCH;
            if let Some(last) = batch.last() {
                self.start = ReadFrom::Sequence(last.sequence + 1);
            }
            self.batch = batch.into();
        }
        let Some(message) = self.batch.pop_front() else {
            return Ok(None);
        };
        page.examined += 1;
        if self.filter.past_end(message.time) {
            self.batch.clear();
            self.ended = true;
            return Ok(None);
        }
        Ok(Some(message))
    }
}

/// When a task was submitted: in its id when the gateway made it (a UUID v7 holds its
/// millisecond), else the time of its first event.
fn submitted_in_id(id: &Id) -> Option<SystemTime> {
    let text = id.as_str();
    let bytes = text.as_bytes();
    if bytes.len() != 32 || bytes[12] != b'7' || !matches!(bytes[16], b'8' | b'9' | b'a' | b'b') {
        return None;
    }
    let millis = u64::from_str_radix(&text[..12], 16).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(millis))
}

impl Gateway {
    /// One page of the tasks that match `filter`, from `token` on, that `caller` may read.
    pub(crate) async fn list_tasks(
        &self,
        filter: &Filter,
        page_size: u32,
        token: &str,
        caller: &Caller,
    ) -> Result<Page, Error> {
        self.check_connected()?;
        let size = match page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        } as usize;
        let named = filter.key.is_some() || filter.workflow.is_some() || filter.parent.is_some();
        let first = match Cursor::parse(token)? {
            Some(cursor) => cursor,
            None if named => Cursor::Named(0),
            None if filter.wants_open() => Self::open_start(filter),
            None => Self::finished_start(filter),
        };
        let mut page = Page {
            tasks: Vec::new(),
            next: None,
            examined: 0,
        };
        let mut cursor = Some(first);
        while let Some(at) = cursor {
            if page.is_done(size) {
                page.next = Some(at.token());
                break;
            }
            cursor = match at {
                Cursor::Named(n) => self.list_named(filter, n, size, caller, &mut page).await?,
                Cursor::Open(from, then) => match self
                    .list_open(filter, from, size, caller, &mut page)
                    .await?
                {
                    Some(next) => Some(Cursor::Open(next, then)),
                    None => match then {
                        Some(late) => Some(Cursor::Late(late)),
                        None => Self::after_open(filter),
                    },
                },
                Cursor::Waiting(from) => match self
                    .list_waiting(filter, from, size, caller, &mut page)
                    .await?
                {
                    Read::Paused(next) => Some(Cursor::Waiting(next)),
                    Read::Ended(end) => Some(Cursor::Open(0, Some(end))),
                },
                Cursor::Late(from) => match self
                    .list_waiting(filter, from, size, caller, &mut page)
                    .await?
                {
                    Read::Paused(next) => Some(Cursor::Late(next)),
                    Read::Ended(_) => Self::after_open(filter),
                },
                Cursor::Finished(from) => self
                    .list_finished(filter, from, size, caller, &mut page)
                    .await?
                    .map(Cursor::Finished),
                Cursor::Outcomes(from) => self
                    .list_outcomes(filter, from, size, caller, &mut page)
                    .await?
                    .map(Cursor::Outcomes),
            };
        }
        Ok(page)
    }

    /// Where the tasks not finished are read from: the waiting parents first, when the filter
    /// wants them, then the tasks stream, then the waiting records stored meanwhile. So a
    /// parent put back in line meanwhile is found (its copy is stored in the tasks stream
    /// before its record says it resumed), and so is one parked meanwhile (its message leaves
    /// the tasks stream only once its record is stored).
    fn open_start(filter: &Filter) -> Cursor {
        if filter.wants(TaskState::Waiting) {
            Cursor::Waiting(0)
        } else {
            Cursor::Open(0, None)
        }
    }

    /// What a list reads after the tasks not finished: the finished ones, if the filter wants
    /// any.
    fn after_open(filter: &Filter) -> Option<Cursor> {
        FINISHED
            .iter()
            .any(|s| filter.wants(*s))
            .then(|| Self::finished_start(filter))
    }

    /// Where the finished tasks are read from: the outcome records when only outcomes other
    /// than success are asked for, else the results (sequence 0: from the filter's times).
    fn finished_start(filter: &Filter) -> Cursor {
        if filter.only_unsuccessful() {
            Cursor::Outcomes(0)
        } else {
            Cursor::Finished(0)
        }
    }

    /// Adds `info` to the page if it matches and the caller may see it.
    async fn offer(
        &self,
        filter: &Filter,
        mut info: v1::TaskInfo,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<(), Error> {
        if !filter.wants(info.state()) || !filter.wants_type(&info.task) {
            return Ok(());
        }
        // A task the broker holds twice (a retry's delayed copy beside the delivery that
        // stored it, a waiting parent's record beside its copy put back in line) is listed
        // once a page.
        if page.tasks.iter().any(|t| t.task_id == info.task_id) {
            return Ok(());
        }
        if caller.check(Op::Read, Some(&info.task)).is_err() {
            return Ok(());
        }
        if info.submitted_at.is_none() {
            info.submitted_at = self.submitted_at(&info).await?.map(Into::into);
        }
        if filter.keeps(&info) {
            page.tasks.push(info);
        }
        Ok(())
    }

    /// When the task was submitted, as far as the broker still says.
    pub(crate) async fn submitted_at(
        &self,
        info: &v1::TaskInfo,
    ) -> Result<Option<SystemTime>, Error> {
        let Ok(id) = Id::parse(&info.task_id) else {
            return Ok(None);
        };
        if let Some(at) = submitted_in_id(&id) {
            return Ok(Some(at));
        }
        let first = broker::next_message(
            &self.client,
            broker::EVENTS_STREAM,
            &subject::events_of(&id),
            1,
        )
        .await
        .map_err(|e| self.read_error(e))?;
        Ok(first.and_then(|m| m.time))
    }

    async fn list_named(
        &self,
        filter: &Filter,
        from: u64,
        size: usize,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<Option<Cursor>, Error> {
        let mut ids: Vec<Id> = Vec::new();
        if let (Some(key), Some(task)) = (&filter.key, &filter.task) {
            let name = Name::parse(task).map_err(Error::InvalidName)?;
            ids.push(match caller.key_scope() {
                None => Id::from_idempotency_key(&name, key),
                Some(scope) => Id::from_idempotency_key(&name, &format!("{scope}\0{key}")),
            });
        }
        if let Some(workflow) = &filter.workflow {
            let info = match self.get_workflow(workflow, false).await {
                Ok(info) => info,
                Err(Error::NotFound(_) | Error::Expired(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let steps: Vec<Id> = info
                .steps
                .iter()
                .filter(|s| s.info.is_some())
                .filter_map(|s| Id::parse(&s.task_id).ok())
                .collect();
            ids = intersect(ids, steps, filter.key.is_some());
        }
        if let Some(parent) = &filter.parent {
            let children: Vec<Id> = self
                .children(parent, usize::MAX)
                .await?
                .iter()
                .filter_map(|c| Id::parse(&c.task_id).ok())
                .collect();
            ids = intersect(
                ids,
                children,
                filter.key.is_some() || filter.workflow.is_some(),
            );
        }
        for (n, id) in (from..).zip(ids.iter().skip(from as usize)) {
            if page.tasks.len() >= size {
                return Ok(Some(Cursor::Named(n)));
            }
            page.examined += 1;
            let info = match self.state(id).await {
                Ok(info) => info,
                Err(Error::NotFound(_) | Error::Expired(_)) => continue,
                Err(e) => return Err(e),
            };
            self.offer(filter, info, caller, page).await?;
        }
        Ok(None)
    }

    /// Reads the tasks stream from `from` until the page is full or the budget spent; the
    /// sequence to go on from, or `None` at its end.
    async fn list_open(
        &self,
        filter: &Filter,
        from: u64,
        size: usize,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<Option<u64>, Error> {
        let mut scan = Scan::new(broker::TASKS_STREAM, WHOLE_STREAM, filter, from);
        while let Some(message) = scan.next(self, page).await? {
            if let Some(info) = self.open_task(filter, &message).await? {
                self.offer(filter, info, caller, page).await?;
            }
            if page.is_done(size) {
                return Ok(Some(message.sequence + 1));
            }
        }
        Ok(None)
    }

    /// The state of the task a message of the tasks stream holds, unless it has finished (it
    /// is listed with the finished ones) or the filter rules it out by its type.
    async fn open_task(
        &self,
        filter: &Filter,
        message: &StoredMessage,
    ) -> Result<Option<v1::TaskInfo>, Error> {
        let headers = &message.headers;
        let subject = headers
            .get("Nats-Subject")
            .map(|s| s.as_str())
            .unwrap_or_default();
        // A schedule's definition is no task.
        if subject.starts_with("taskwire.schedules.") {
            return Ok(None);
        }
        let Some(task) = headers.get(header::TASK).map(|t| t.as_str().to_owned()) else {
            return Ok(None);
        };
        if !filter.wants_type(&task) {
            return Ok(None);
        }
        let Ok(name) = Name::parse(&task) else {
            return Ok(None);
        };
        let Some(id) = crate::pauses::queued_task_id(&name, headers, message.sequence) else {
            return Ok(None);
        };
        let info = match self.state(&id).await {
            Ok(info) => info,
            // A schedule's tick no worker has taken yet: queued since the broker stored it.
            Err(Error::NotFound(_)) => {
                let mut headers = headers.clone();
                headers.insert(header::STATE, broker::state_name(TaskState::Queued));
                headers.insert(header::ATTEMPT, "0");
                let mut info = broker::task_info(&id, &headers, &message.payload, message.time);
                info.submitted_at = message.time.map(Into::into);
                info
            }
            Err(Error::Expired(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(OPEN.contains(&info.state()).then_some(info))
    }

    /// Reads the waiting records from `from`: a parent that waits for its children is in no
    /// stream of tasks until they have ended. A record resumed (its copy is in the tasks
    /// stream, read next), or whose parent has gone on (running again, or finished), is read
    /// past.
    async fn list_waiting(
        &self,
        filter: &Filter,
        from: u64,
        size: usize,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<Read, Error> {
        let mut scan = Scan::new(
            broker::WORKFLOWS_STREAM,
            children::ALL_WAITING,
            filter,
            from,
        );
        // Where a later read goes on: past the last record read (from the same start when
        // none was).
        let mut end = from;
        while let Some(message) = scan.next(self, page).await? {
            end = message.sequence + 1;
            let waits =
                message.headers.get(header::STATE).map(|v| v.as_str()) == Some(children::WAITING);
            // The record holds the parent's task type: one the filter rules out costs no read.
            let wanted = || {
                v1::ChildrenPark::decode(message.payload.as_ref())
                    .is_ok_and(|park| filter.wants_type(&park.parent_task))
            };
            let parent = message
                .headers
                .get("Nats-Subject")
                .and_then(|s| children::waiting_in(s.as_str()))
                .and_then(|id| Id::parse(id).ok());
            if let (true, Some(id)) = (waits && wanted(), parent) {
                match self.state(&id).await {
                    Ok(info) if info.state() == TaskState::Waiting => {
                        self.offer(filter, info, caller, page).await?;
                    }
                    Ok(_) | Err(Error::NotFound(_) | Error::Expired(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if page.is_done(size) {
                return Ok(Read::Paused(end));
            }
        }
        Ok(Read::Ended(end))
    }

    /// Reads the results stream from `from`: every finished task, in the order it finished.
    async fn list_finished(
        &self,
        filter: &Filter,
        from: u64,
        size: usize,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<Option<u64>, Error> {
        let mut scan = Scan::new(broker::RESULTS_STREAM, WHOLE_STREAM, filter, from);
        while let Some(message) = scan.next(self, page).await? {
            let id = message.headers.get(header::TASK_ID).map(|v| v.as_str());
            if let (false, Some(Ok(id))) = (
                broker::is_expiry_marker(&message.headers),
                id.map(Id::parse),
            ) {
                let info = broker::task_info(&id, &message.headers, &message.payload, message.time);
                self.offer(filter, info, caller, page).await?;
            }
            if page.is_done(size) {
                return Ok(Some(message.sequence + 1));
            }
        }
        Ok(None)
    }

    /// Reads the outcome records from `from`: each names a task that failed, was cancelled or
    /// expired, and its result says whether it still does (a record whose result lost to
    /// another outcome, or was replayed since, is read past).
    async fn list_outcomes(
        &self,
        filter: &Filter,
        from: u64,
        size: usize,
        caller: &Caller,
        page: &mut Page,
    ) -> Result<Option<u64>, Error> {
        let wanted: Vec<TaskState> = FINISHED
            .into_iter()
            .filter(|s| *s != TaskState::Succeeded && filter.wants(*s))
            .collect();
        let records = match wanted.as_slice() {
            [one] => subject::outcomes_in(*one),
            _ => WHOLE_STREAM.to_owned(),
        };
        let mut scan = Scan::new(broker::OUTCOMES_STREAM, &records, filter, from);
        while let Some(message) = scan.next(self, page).await? {
            let recorded = message
                .headers
                .get(header::STATE)
                .map(|v| broker::parse_state(v.as_str()))
                .unwrap_or_default();
            let task = message
                .headers
                .get(header::TASK)
                .map(|v| v.as_str())
                .unwrap_or_default();
            let id = message.headers.get(header::TASK_ID).map(|v| v.as_str());
            if wanted.contains(&recorded)
                && filter.wants_type(task)
                && let Some(Ok(id)) = id.map(Id::parse)
            {
                match self.result(&id).await {
                    Ok(Some(info)) if info.state() == recorded => {
                        self.offer(filter, info, caller, page).await?;
                    }
                    Ok(_) | Err(Error::Expired(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if page.is_done(size) {
                return Ok(Some(message.sequence + 1));
            }
        }
        Ok(None)
    }

    /// Cancels every task that matches `filter` and has not finished: (cancelled, finished
    /// first).
    pub(crate) async fn cancel_many(
        &self,
        mut filter: Filter,
        caller: &Caller,
    ) -> Result<(u64, u64), Error> {
        // Only those not finished can be cancelled.
        filter.states = if filter.states.is_empty() {
            OPEN.to_vec()
        } else {
            filter
                .states
                .iter()
                .copied()
                .filter(|s| OPEN.contains(s))
                .collect()
        };
        if filter.states.is_empty() || filter.finished.is_set() || filter.error.is_some() {
            return Ok((0, 0));
        }
        let (mut cancelled, mut finished_first) = (0, 0);
        // A task listed again on a later page (held twice by the broker) was cancelled by this
        // call already: its second cancel would find its own result.
        let mut seen = std::collections::HashSet::new();
        let mut token = String::new();
        loop {
            let page = self.list_tasks(&filter, MAX_PAGE, &token, caller).await?;
            for info in page.tasks {
                if caller.check(Op::Cancel, Some(&info.task)).is_err()
                    || !seen.insert(info.task_id.clone())
                {
                    continue;
                }
                let (Ok(id), Ok(name)) = (Id::parse(&info.task_id), Name::parse(&info.task)) else {
                    continue;
                };
                let scheduled = info.state() == TaskState::Scheduled;
                match self
                    .cancel_with_children(&id, &name, info.attempt, scheduled)
                    .await?
                {
                    Cancelled::Now | Cancelled::ByWorker(_) => cancelled += 1,
                    Cancelled::Finished(_) => finished_first += 1,
                }
            }
            match page.next {
                Some(next) => token = next,
                None => break,
            }
        }
        tracing::info!(cancelled, finished_first, "cancelled by filter");
        Ok((cancelled, finished_first))
    }
}

/// `found` narrowed to what `earlier` holds, when an earlier part of the filter named tasks.
fn intersect(earlier: Vec<Id>, found: Vec<Id>, narrowed: bool) -> Vec<Id> {
    if !narrowed {
        return found;
    }
    earlier
        .into_iter()
        .filter(|id| found.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_read_back_and_strangers_are_refused() {
        for cursor in [
            Cursor::Named(3),
            Cursor::Open(17, None),
            Cursor::Open(17, Some(3)),
            Cursor::Waiting(4),
            Cursor::Late(0),
            Cursor::Finished(1),
            Cursor::Outcomes(99),
        ] {
            assert_eq!(Cursor::parse(&cursor.token()).expect("valid"), Some(cursor));
        }
        assert_eq!(Cursor::parse("").expect("valid"), None);
        for bad in ["open", "open:x", "later:3", "3", "open:1:x", "late:1:2"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_submit_time_is_read_from_an_id_the_gateway_made() {
        let id = Id::generate();
        let at = submitted_in_id(&id).expect("a v7 id");
        let now = SystemTime::now();
        assert!(at <= now && now.duration_since(at).expect("valid") < Duration::from_secs(5));
        assert_eq!(
            submitted_in_id(&Id::parse("order-42").expect("valid")),
            None
        );
    }

    #[test]
    fn filters_say_what_to_fix() {
        let parse = |f: v1::TaskFilter| Filter::parse(f).map(|_| ()).map_err(|e| e.to_string());
        let key = parse(v1::TaskFilter {
            idempotency_key: "k".into(),
            task: "examples.*".into(),
            ..Default::default()
        });
        assert!(key.expect_err("refused").contains("give its task type"));
        let pattern = parse(v1::TaskFilter {
            task: "examples.*;".into(),
            ..Default::default()
        });
        assert!(pattern.expect_err("refused").contains("';'"));
        let state = parse(v1::TaskFilter {
            states: vec![42],
            ..Default::default()
        });
        assert!(state.expect_err("refused").contains("state 42"));
        let range = parse(v1::TaskFilter {
            finished_after: Some(prost_types::Timestamp {
                seconds: 20,
                nanos: 0,
            }),
            finished_before: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert!(range.expect_err("refused").contains("later than"));
    }

    #[test]
    fn within_bounds_the_finish_time_of_finished_states_and_else_the_submit_time() {
        let hour = prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        };
        let with = |states: &[TaskState]| {
            Filter::parse(v1::TaskFilter {
                states: states.iter().map(|s| *s as i32).collect(),
                within: Some(hour),
                ..Default::default()
            })
            .expect("valid")
        };
        let about_an_hour_ago = |at: Option<SystemTime>| {
            let ago = SystemTime::now()
                .duration_since(at.expect("a bound"))
                .expect("past");
            (Duration::from_secs(3599)..Duration::from_secs(3660)).contains(&ago)
        };
        let failed = with(&[TaskState::Failed, TaskState::Cancelled]);
        assert!(about_an_hour_ago(failed.finished.after) && failed.submitted.after.is_none());
        for states in [
            &[TaskState::Queued][..],
            &[TaskState::Failed, TaskState::Running],
            &[],
        ] {
            let open = with(states);
            assert!(about_an_hour_ago(open.submitted.after) && open.finished.after.is_none());
        }
        // A bound given in so many words stands.
        let given = Filter::parse(v1::TaskFilter {
            submitted_after: Some(prost_types::Timestamp {
                seconds: 20,
                nanos: 0,
            }),
            within: Some(hour),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            given.submitted.after,
            Some(UNIX_EPOCH + Duration::from_secs(20))
        );
        let negative = Filter::parse(v1::TaskFilter {
            within: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert!(
            negative
                .map(|_| ())
                .expect_err("refused")
                .to_string()
                .contains("within is negative")
        );
    }

    #[test]
    fn only_outcomes_other_than_success_read_the_records() {
        let with = |states: Vec<TaskState>| {
            Filter::parse(v1::TaskFilter {
                states: states.into_iter().map(|s| s as i32).collect(),
                ..Default::default()
            })
            .expect("valid")
        };
        assert!(with(vec![TaskState::Failed]).only_unsuccessful());
        assert!(with(vec![TaskState::Failed, TaskState::Cancelled]).only_unsuccessful());
        assert!(!with(vec![TaskState::Failed, TaskState::Succeeded]).only_unsuccessful());
        assert!(!with(vec![]).only_unsuccessful());
        assert!(!with(vec![TaskState::Queued]).only_unsuccessful());
        let by_error = Filter::parse(v1::TaskFilter {
            error_contains: "refused".into(),
            ..Default::default()
        })
        .expect("valid");
        assert!(by_error.only_unsuccessful() && !by_error.wants_open());
        assert!(with(vec![TaskState::Queued]).wants_open());
        assert!(!with(vec![TaskState::Failed]).wants_open());
    }
}
