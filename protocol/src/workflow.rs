//! Workflows in the broker: the ids their steps' tasks get, where a workflow and its end are
//! kept, and the joins that count a step's finished inputs.
//!
//! A workflow `<w>` is kept in `TASKWIRE_WORKFLOWS`: its checked definition on
//! `taskwire.workflows.<w>.spec` (a `taskwire.v1.StoredWorkflow`), its end on
//! `taskwire.workflows.<w>.end` (a `taskwire.v1.WorkflowEnd`), each stored once, and for a step
//! that takes several results, the ones that succeeded so far on
//! `taskwire.workflows.<w>.join.<step>` (a bitmap, replaced by compare-and-set). Step `n`'s task
//! has the id `<w>-<n>` (element `j` of a map step: `<w>-<n>-<j>`); its result is stored on `taskwire.results.<w>-<n>.workflow-step.<task>`,
//! which a durable consumer of the results stream hands to one gateway, which starts what comes
//! next.

use taskwire::task::Id;

/// The token between a step's id and its task in its result subject.
pub const STEP_MARK: &str = "workflow-step";

/// Every workflow subject.
pub const WORKFLOWS: &str = "taskwire.workflows.>";
/// Every workflow's definition: what the durable consumer of new workflows takes.
pub const SPECS: &str = "taskwire.workflows.*.spec";
/// Every workflow step's result (see [`crate::subject::result`]).
pub const STEP_RESULTS: &str = "taskwire.results.*.workflow-step.>";
/// The durable consumer of new workflows, which starts their first steps.
pub const STARTS_CONSUMER: &str = "taskwire-workflow-starts";
/// The durable consumer of step results, which starts the steps that come next.
pub const STEPS_CONSUMER: &str = "taskwire-workflow-steps";
/// The most steps a workflow has (its on_failure step aside).
pub const MAX_STEPS: usize = 1000;

/// The definition of workflow `w`.
pub fn spec(w: &Id) -> String {
    format!("taskwire.workflows.{w}.spec")
}

/// The end of workflow `w`.
pub fn end(w: &Id) -> String {
    format!("taskwire.workflows.{w}.end")
}

/// The join of step `step` of workflow `w`: which of the steps it takes results from
/// succeeded. `step` is a step's index, or `end` for the workflow's own end (its last steps).
pub fn join(w: &Id, step: &str) -> String {
    format!("taskwire.workflows.{w}.join.{step}")
}

/// The id of step `n`'s task in workflow `w`.
pub fn step_id(w: &Id, n: usize) -> Id {
    Id::parse(&format!("{w}-{n}")).expect("a workflow id and a number make an id")
}

/// The id of element `j`'s task of map step `n` in workflow `w`.
pub fn element_id(w: &Id, n: usize, j: usize) -> Id {
    Id::parse(&format!("{w}-{n}-{j}")).expect("a workflow id and two numbers make an id")
}

/// Which task of a workflow an id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTask {
    pub workflow: Id,
    pub step: usize,
    /// The element, for a task of a map step.
    pub element: Option<usize>,
}

/// The workflow, step and element of a workflow task's id: `<w>-<n>` or `<w>-<n>-<j>`, where
/// `<w>` is 32 lowercase hex digits, as every workflow id is (ids of plain tasks never have
/// this shape).
pub fn task_of(id: &str) -> Option<StepTask> {
    let mut parts = id.split('-');
    let w = parts.next()?;
    let hex = w.len() == 32
        && w.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return None;
    }
    let number = |part: &str| -> Option<usize> {
        if part.is_empty() || part.len() > 6 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let step = number(parts.next()?)?;
    let element = match parts.next() {
        None => None,
        Some(j) => Some(number(j)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(StepTask {
        workflow: Id::parse(w).ok()?,
        step,
        element,
    })
}

/// The workflow and the step of a step's task id, `<w>-<n>` (see [`task_of`]).
pub fn step_of(id: &str) -> Option<(Id, usize)> {
    match task_of(id)? {
        StepTask {
            workflow,
            step,
            element: None,
        } => Some((workflow, step)),
        _ => None,
    }
}

/// The header of a join that says how many steps (or a map's elements) it waits for.
pub const JOIN_COUNT: &str = "Taskwire-Join-Count";
/// The most elements a map step has.
pub const MAX_ELEMENTS: usize = 100_000;

/// A join's bitmap: bit `i` set when the `i`th awaited step succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Join(Vec<u8>);

impl Join {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Sets bit `i`; false when it was set already.
    pub fn set(&mut self, i: usize) -> bool {
        let (byte, bit) = (i / 8, 1u8 << (i % 8));
        if self.0.len() <= byte {
            self.0.resize(byte + 1, 0);
        }
        let new = self.0[byte] & bit == 0;
        self.0[byte] |= bit;
        new
    }

    /// How many of bits `0..n` are set.
    pub fn count(&self, n: usize) -> usize {
        (0..n)
            .filter(|&i| self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
            .count()
    }

    /// Whether bits `0..n` are all set.
    pub fn full(&self, n: usize) -> bool {
        (0..n).all(|i| self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_name_their_workflow_and_step() {
        let w = Id::generate();
        let id = step_id(&w, 12);
        assert_eq!(step_of(id.as_str()), Some((w.clone(), 12)));
        assert_eq!(step_of(w.as_str()), None);
        for plain in ["poison-17", "a-1", "0123456789abcdef0123456789abcdeF-1"] {
            assert_eq!(step_of(plain), None, "{plain}");
        }
        assert_eq!(
            step_of("0123456789abcdef0123456789abcdef-x"),
            None,
            "a step is a number"
        );
        let element = element_id(&w, 3, 9999);
        assert_eq!(
            task_of(element.as_str()),
            Some(StepTask {
                workflow: w.clone(),
                step: 3,
                element: Some(9999)
            })
        );
        assert_eq!(step_of(element.as_str()), None);
        assert_eq!(task_of(&format!("{w}-1-2-3")), None);
    }

    #[test]
    fn joins_count_each_step_once() {
        let mut join = Join::default();
        assert!(!join.full(10));
        for i in 0..10 {
            assert!(join.set(i));
            assert!(!join.set(i), "set twice");
            assert_eq!(join.full(10), i == 9);
        }
        let read = Join::from_bytes(join.as_bytes());
        assert!(read.full(10));
        assert!(Join::default().full(0));
    }
}
