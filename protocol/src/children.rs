//! Child tasks: tasks a running task submits from its context.
//!
//! A worker runtime sends each child as a `taskwire.v1.ChildSubmission` request on
//! [`SUBMIT`]; one gateway of the queue group [`GATEWAYS`] checks and stores it and answers a
//! `taskwire.v1.ChildSubmitted`. Before the child is stored, the gateway records the family in
//! `TASKWIRE_WORKFLOWS`: the child's parent on `taskwire.workflows.<child>.parent` (the parent's
//! id as the body, its task in `Taskwire-Task`), and the child among the parent's children on
//! `taskwire.workflows.<parent>.children.<child>` (the child's task in `Taskwire-Task`); then it
//! looks at the parent's cancel mark, so that a cancel of the parent either finds the child
//! recorded or is seen by the submit. A child's id is `child-<32 hex digits>` (see
//! [`child_id`]), and its result is stored on `taskwire.results.<child>.child-task.<token>`.
//!
//! A parent may wait for its children without holding a worker: its handler asks whether they
//! have all ended (`taskwire.v1.ChildrenWait` on [`WAIT`]); when they have not, it ends, and the
//! runtime parks it (`taskwire.v1.ChildrenPark` on [`PARK`]): the gateway keeps the task message
//! on `taskwire.workflows.<parent>.waiting` and the runtime stores a `waiting` event. Each child
//! that ends is marked on `taskwire.workflows.<parent>.ended.<child>` by the gateway that takes
//! its result from the durable consumer [`ENDED_CONSUMER`]. Whichever of the park and the last
//! child's end sees every recorded child marked puts the parent back in line (its message again,
//! with `Taskwire-Resume: <n>`, de-duplicated as `<parent>.resume.<n>`), then replaces the
//! waiting record by a resumed one (compare-and-set), so that a park resumes once. The parent
//! runs again from its start: the children it submits again are found, and its wait answers
//! their outcomes.

use taskwire::task::{Id, Name};

/// Where worker runtimes send the children their tasks submit.
pub const SUBMIT: &str = "taskwire.children.submit";
/// Where a worker runtime asks whether a parent's children have all ended.
pub const WAIT: &str = "taskwire.children.wait";
/// Where a worker runtime parks a parent that waits for its children.
pub const PARK: &str = "taskwire.children.park";
/// The token between a child's id and its task in its result subject.
pub const CHILD_MARK: &str = "child-task";
/// Every child task's result (see [`crate::subject::result`]).
pub const CHILD_RESULTS: &str = "taskwire.results.*.child-task.>";
/// The durable consumer of child results, which marks them ended and resumes waiting parents.
pub const ENDED_CONSUMER: &str = "taskwire-children-ended";
/// The state a waiting record is in (`Taskwire-State`): waiting, or resumed.
pub const WAITING: &str = "waiting";
pub const RESUMED: &str = "resumed";
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

/// Where `child` is marked ended among the children of `parent`.
pub fn ended(parent: &Id, child: &Id) -> String {
    format!("taskwire.workflows.{parent}.ended.{child}")
}

/// Matches every child of `parent` marked ended.
pub fn ended_of(parent: &Id) -> String {
    format!("taskwire.workflows.{parent}.ended.*")
}

/// Where a parent that waits for its children is kept.
pub fn waiting(parent: &Id) -> String {
    format!("taskwire.workflows.{parent}.waiting")
}

/// Matches the waiting record of every parent (see [`waiting`]).
pub const ALL_WAITING: &str = "taskwire.workflows.*.waiting";

/// The parent in a subject of [`ALL_WAITING`].
pub fn waiting_in(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("taskwire.workflows.")?
        .strip_suffix(".waiting")
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

/// Whether `id` is a child's: `child-` and 32 lowercase hex digits.
pub fn is_child(id: &str) -> bool {
    id.strip_prefix("child-").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The de-duplication id of the `n`th resumed message of `parent`.
pub fn resume_msg_id(parent: &Id, n: u32) -> String {
    format!("{parent}.resume.{n}")
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
    let hash = Id::from_idempotency_key(task, &format!("{}\0{key}", scope(parent)));
    Id::parse(&format!("child-{hash}")).expect("a prefix and 32 hex digits make an id")
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
        let sleep = Name::parse("examples.chaos.v1.Chaos/Sleep").expect("a name");
        let flaky = Name::parse("examples.chaos.v1.Chaos/Flaky").expect("a name");
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
        assert!(is_child(a.as_str()));
        assert!(!is_child(p.as_str()));
        assert!(!is_child("child-1234"));
        assert!(
            crate::subject::result(&sleep, &a).contains(".child-task."),
            "a child's result is marked for the consumer that resumes parents"
        );
        assert!(!crate::subject::result(&sleep, &p).contains(".child-task."));
        assert_eq!(
            waiting_in(&waiting(&p)),
            Some(p.as_str()),
            "the parent is read back from its waiting record's subject"
        );
        assert_eq!(waiting_in(&children_of(&p)), None);
    }
}
