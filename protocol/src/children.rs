//! Child tasks: tasks a running task submits from its context.
//!
//! A worker runtime sends each child as a `taskwire.v1.ChildSubmission` request on
//! [`SUBMIT`]; one gateway of the queue group [`GATEWAYS`] checks and stores it and answers a
//! `taskwire.v1.ChildSubmitted`. Before the child is stored, the gateway records the family in
//! `TASKWIRE_WORKFLOWS`: the child's parent on `taskwire.workflows.<child>.parent` (the parent's
//! id as the body, its task in `Taskwire-Task`), and the child among the parent's children on
//! `taskwire.workflows.<parent>.children.<child>` (the child's task in `Taskwire-Task`); then it
//! looks at the parent's cancel mark, so that a cancel of the parent either finds the child
//! recorded or is seen by the submit.

use taskwire::task::{Id, Name};

/// Where worker runtimes send the children their tasks submit.
pub const SUBMIT: &str = "taskwire.children.submit";
/// The queue group of the gateways answering [`SUBMIT`].
pub const GATEWAYS: &str = "taskwire-gateways";

/// Where the parent of `child` is recorded.
pub fn parent(child: &Id) -> String {
    format!("taskwire.workflows.{child}.parent")
}

/// Where `child` is recorded among the children of `parent`.
pub fn child(parent: &Id, child: &Id) -> String {
    format!("taskwire.workflows.{parent}.children.{child}")
}

/// Matches every child recorded for `parent`.
pub fn children_of(parent: &Id) -> String {
    format!("taskwire.workflows.{parent}.children.*")
}

/// The child in a subject of [`children_of`].
pub fn child_in(subject: &str) -> Option<&str> {
    // taskwire.workflows.<parent>.children.<child>
    subject.split('.').nth(4)
}

/// The key of a child submitted without one of its own: its place among the children of the
/// parent's attempt.
pub fn index_key(index: u32) -> String {
    format!("#{index}")
}

/// The id of the child of `parent` submitted as `task` with `key`: the same parent, task and
/// key always give the same id, so that a parent's attempt that runs again finds the children
/// it submitted before.
pub fn child_id(parent: &Id, task: &Name, key: &str) -> Id {
    Id::from_idempotency_key(task, &format!("{}\0{key}", scope(parent)))
}

/// The idempotency scope of the children of `parent`.
pub fn scope(parent: &Id) -> String {
    format!("child\0{parent}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_id_is_made_from_its_parent_task_and_key() {
        let (p, q) = (Id::generate(), Id::generate());
        let sleep = Name::parse("examples.chaos.v1.Chaos/Sleep").unwrap();
        let flaky = Name::parse("examples.chaos.v1.Chaos/Flaky").unwrap();
        let a = child_id(&p, &sleep, &index_key(0));
        assert_eq!(a, child_id(&p, &sleep, &index_key(0)));
        assert_ne!(a, child_id(&p, &sleep, &index_key(1)));
        assert_ne!(a, child_id(&q, &sleep, &index_key(0)));
        assert_ne!(a, child_id(&p, &flaky, &index_key(0)));
        assert_eq!(
            child_in(&child(&p, &a)),
            Some(a.as_str()),
            "the child is read back from its record's subject"
        );
        assert!(crate::workflow::task_of(a.as_str()).is_none());
    }
}
