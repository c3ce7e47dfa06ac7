//! Subjects of the layout.

use taskwire::task::{Id, Name};

use taskwire::v1::{self, Priority};

/// Every task subject of normal priority.
pub const TASKS: &str = "taskwire.tasks.>";
/// Every task subject of high priority.
pub const TASKS_HIGH: &str = "taskwire.tasks-high.>";
/// Every task subject of low priority.
pub const TASKS_LOW: &str = "taskwire.tasks-low.>";
/// Every delayed task (a message schedule).
pub const DELAYED: &str = "taskwire.delayed.>";
/// Every schedule (a repeating message schedule).
pub const SCHEDULES: &str = "taskwire.schedules.>";
/// Every result subject (`>`: results stored as `taskwire.results.<id>` by earlier
/// versions stay readable).
pub const RESULTS: &str = "taskwire.results.>";
/// The results the stream republishes: `taskwire.results.<id>.<token>`.
pub const RESULTS_BY_TYPE: &str = "taskwire.results.*.>";
/// Where the results stream republishes each result it stored (and only those): waiters
/// listen here, so a publish the stream refused, or a forged one, never reaches them.
/// Each on `taskwire.stored.results.<partition>.<id>.<token>` (see [`crate::partition`]).
pub const STORED_RESULTS: &str = "taskwire.stored.results.>";
/// The republish destination of [`RESULTS_BY_TYPE`]: the id's partition, then the id and the
/// token.
pub const STORED_RESULTS_MAPPING: &str =
    "taskwire.stored.results.{{partition(64,1)}}.{{wildcard(1)}}.>";

/// The stored results of one partition, which the gateway holding it subscribes to.
pub fn stored_results_in(partition: u32) -> String {
    format!("taskwire.stored.results.{partition}.>")
}

/// The stored result of one task, for a gateway waiting for an id outside its partition.
pub fn stored_result_of(id: &Id) -> String {
    format!(
        "taskwire.stored.results.{}.{id}.>",
        crate::partition::partition_of(id)
    )
}

/// The id in a subject of [`STORED_RESULTS`].
pub fn stored_result_id(subject: &str) -> Option<&str> {
    // taskwire.stored.results.<partition>.<id>.<token>
    subject.split('.').nth(4)
}
/// Every event subject.
pub const EVENTS: &str = "taskwire.events.>";
/// Every dead letter subject.
pub const DEAD: &str = "taskwire.dead.>";
/// Every outcome record (the outcomes other than success, by state).
pub const OUTCOMES: &str = "taskwire.outcomes.>";

/// Where tasks of this type queue at normal priority:
/// `taskwire.tasks.examples.magic.v1.Magic.Add`.
pub fn task(name: &Name) -> String {
    format!("taskwire.tasks.{}", name.token())
}

/// Where tasks of this type queue at a priority.
pub fn task_at(name: &Name, priority: Priority) -> String {
    match priority {
        Priority::High => format!("taskwire.tasks-high.{}", name.token()),
        Priority::Low => format!("taskwire.tasks-low.{}", name.token()),
        Priority::Normal | Priority::Unspecified => task(name),
    }
}

/// Where the broker keeps a schedule.
pub fn schedule(name: &str) -> String {
    format!("taskwire.schedules.{name}")
}

/// Where the broker holds a delayed task until its time.
pub fn delayed(id: &Id) -> String {
    format!("taskwire.delayed.{id}")
}

/// Where the result of a task is stored: id first, then the task token, so that NATS
/// permissions can let a worker store and read the results of its own task types only. A
/// workflow step's result has [`crate::workflow::STEP_MARK`] before the token, so that the
/// workflows' consumer takes those results and no other; a child task's has
/// [`crate::children::CHILD_MARK`], for the consumer that resumes waiting parents.
pub fn result(name: &Name, id: &Id) -> String {
    if crate::workflow::task_of(id.as_str()).is_some() {
        format!(
            "taskwire.results.{id}.{}.{}",
            crate::workflow::STEP_MARK,
            name.token()
        )
    } else if crate::children::is_child(id.as_str()) {
        format!(
            "taskwire.results.{id}.{}.{}",
            crate::children::CHILD_MARK,
            name.token()
        )
    } else {
        format!("taskwire.results.{id}.{}", name.token())
    }
}

/// Matches the result of one task whatever its type: a task id has one result, checked
/// against this subject when a result is stored.
pub fn result_of(id: &Id) -> String {
    format!("taskwire.results.{id}.>")
}

/// Where the state changes of a task are stored. The id comes first: a task token has a
/// varying number of parts, so only this order lets one filter find a task's events by id
/// (`taskwire.events.<id>.>`) and another all events of a type
/// (`taskwire.events.*.examples.magic.v1.Magic.Add`).
pub fn event(name: &Name, id: &Id) -> String {
    format!("taskwire.events.{id}.{}", name.token())
}

/// Matches the state changes of one task whatever its type.
pub fn events_of(id: &Id) -> String {
    format!("taskwire.events.{id}.>")
}

/// Where a task that failed for good is kept (id first, as for events).
pub fn dead(name: &Name, id: &Id) -> String {
    format!("taskwire.dead.{id}.{}", name.token())
}

/// Matches the dead letter of one task.
pub fn dead_of(id: &Id) -> String {
    format!("taskwire.dead.{id}.>")
}

/// Matches the dead letters of one task type.
pub fn dead_of_type(name: &Name) -> String {
    format!("taskwire.dead.*.{}", name.token())
}

/// Where a task's outcome other than success is recorded: the state first, so that one
/// filter (`taskwire.outcomes.failed.>`) finds every failed task and no other record; then the id
/// and the token, as for results, so that NATS permissions can let a worker record the outcomes
/// of its own task types only.
pub fn outcome(state: v1::TaskState, name: &Name, id: &Id) -> String {
    format!(
        "taskwire.outcomes.{}.{id}.{}",
        crate::state_name(state),
        name.token()
    )
}

/// Matches every outcome record in one state (`failed`, `cancelled`, `expired`).
pub fn outcomes_in(state: v1::TaskState) -> String {
    format!("taskwire.outcomes.{}.>", crate::state_name(state))
}

/// Matches every outcome record of one task, whatever its state and type.
pub fn outcomes_of(id: &Id) -> String {
    format!("taskwire.outcomes.*.{id}.>")
}

/// The state and the id in a subject of [`OUTCOMES`].
pub fn outcome_parts(subject: &str) -> Option<(&str, &str)> {
    let mut parts = subject.strip_prefix("taskwire.outcomes.")?.splitn(3, '.');
    Some((parts.next()?, parts.next()?))
}
