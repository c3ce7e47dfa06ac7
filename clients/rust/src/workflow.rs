//! Workflows: steps that feed each other, built here and checked by the gateway.
//!
//! ```no_run
//! use std::time::Duration;
//! use taskwire_client::workflow::{Step, Workflow};
//! use taskwire_examples::flow::v1::{Numbers, ScaleArgs};
//!
//! # async fn run(client: taskwire_client::Client) -> Result<(), taskwire_client::Error> {
//! // sum(1, 2, 3), doubled, then scaled by 10: its total becomes ScaleArgs.value.
//! let workflow = Workflow::chain([
//!     Step::new("sum", "examples.flow.v1.Flow/Sum").args(&Numbers { values: vec![1, 2, 3] }),
//!     Step::new("double", "examples.flow.v1.Flow/Double"),
//!     Step::new("scale", "examples.flow.v1.Flow/Scale")
//!         .args(&ScaleArgs { value: 0, factor: 10 })
//!         .field("total", "value"),
//! ]);
//! let id = client.submit_workflow(workflow).await?;
//! let info = client.wait_workflow(&id, Duration::from_secs(30), false).await?;
//! # let _ = info;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use taskwire::v1;

use crate::{Client, Error, SubmitOptions};

/// One step: a task, what it takes, its arguments.
#[derive(Debug, Clone)]
pub struct Step(v1::Step);

impl Step {
    /// Step `name` (unique in its workflow) runs `task` (`package.Service/Method`).
    pub fn new(name: impl Into<String>, task: impl Into<String>) -> Self {
        Self(v1::Step {
            name: name.into(),
            task: task.into(),
            ..Default::default()
        })
    }

    /// Its arguments: the whole input of a first step; the rest of the input of one whose
    /// input `field` or `collect` fill.
    pub fn args(mut self, args: &impl prost::Message) -> Self {
        self.0.args = Some(v1::step::Args::ArgsProto(args.encode_to_vec()));
        self
    }

    /// Its arguments as proto3 JSON.
    pub fn args_json(mut self, json: impl Into<String>) -> Self {
        self.0.args = Some(v1::step::Args::ArgsJson(json.into()));
        self
    }

    /// Runs after `step`, taking its result.
    pub fn after(mut self, step: impl Into<String>) -> Self {
        self.0.after.push(step.into());
        self
    }

    /// Copies field `from` of the result it takes to field `to` of its input.
    pub fn field(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.0.fields.push(v1::FieldMapping {
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Takes the results of every step it comes after into the repeated field `field`.
    pub fn collect(mut self, field: impl Into<String>) -> Self {
        self.0.collect = field.into();
        self
    }

    /// A map: one task per element of the repeated field `field` of the one result it takes,
    /// each with its element as input.
    pub fn for_each(mut self, field: impl Into<String>) -> Self {
        self.0.for_each = field.into();
        self
    }

    /// Options of its task (attempts, time limit, backoff, priority, ttl, result TTL).
    pub fn options(mut self, options: SubmitOptions) -> Self {
        self.0.options = Some(options.into_proto());
        self
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn into_proto(self) -> v1::Step {
        self.0
    }
}

/// Steps, and what happens when one fails.
#[derive(Debug, Clone, Default)]
pub struct Workflow(v1::Workflow);

impl Workflow {
    /// These steps as given: each runs after the steps its `after` names.
    pub fn of(steps: impl IntoIterator<Item = Step>) -> Self {
        Self(v1::Workflow {
            steps: steps.into_iter().map(Step::into_proto).collect(),
            ..Default::default()
        })
    }

    /// A chain: each step after the one before it, taking its result.
    pub fn chain(steps: impl IntoIterator<Item = Step>) -> Self {
        let mut previous: Option<String> = None;
        let steps = steps.into_iter().map(|step| {
            let step = match previous.take() {
                Some(before) if step.0.after.is_empty() => step.after(before),
                _ => step,
            };
            previous = Some(step.0.name.clone());
            step
        });
        Self::of(steps.collect::<Vec<_>>())
    }

    /// A group: steps side by side, none waiting for another.
    pub fn group(steps: impl IntoIterator<Item = Step>) -> Self {
        Self::of(steps)
    }

    /// A chord: `callback` after every step that nothing comes after yet, taking all their
    /// results into its repeated field `collect`, in the order they were added.
    pub fn then_collect(mut self, callback: Step, collect: impl Into<String>) -> Self {
        let taken: std::collections::HashSet<&str> = self
            .0
            .steps
            .iter()
            .flat_map(|s| s.after.iter().map(String::as_str))
            .collect();
        let last: Vec<String> = self
            .0
            .steps
            .iter()
            .filter(|s| !taken.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect();
        let mut callback = callback.collect(collect);
        callback.0.after = last;
        self.0.steps.push(callback.0);
        self
    }

    /// `step` after the last step added, taking its result.
    pub fn then(mut self, step: Step) -> Self {
        let step = match self.0.steps.last() {
            Some(last) if step.0.after.is_empty() => {
                let name = last.name.clone();
                step.after(name)
            }
            _ => step,
        };
        self.0.steps.push(step.0);
        self
    }

    /// The step submitted when the workflow fails; its task takes a `taskwire.v1.WorkflowFailure`.
    pub fn on_failure(mut self, step: Step) -> Self {
        self.0.on_failure = Some(step.0);
        self
    }

    /// Steps queued or running when one fails finish rather than being cancelled.
    pub fn let_running_finish(mut self) -> Self {
        self.0.let_running_finish = true;
        self
    }

    pub fn into_proto(self) -> v1::Workflow {
        self.0
    }
}

impl From<v1::Workflow> for Workflow {
    fn from(workflow: v1::Workflow) -> Self {
        Self(workflow)
    }
}

impl Client {
    /// Submits a workflow; its id.
    pub async fn submit_workflow(&self, workflow: Workflow) -> Result<String, Error> {
        self.submit_workflow_keyed(workflow, "")
            .await
            .map(|(id, _)| id)
    }

    /// Submits a workflow once per idempotency key: the id, and whether the key named a
    /// workflow submitted before.
    pub async fn submit_workflow_keyed(
        &self,
        workflow: Workflow,
        idempotency_key: &str,
    ) -> Result<(String, bool), Error> {
        let response = self
            .workflows
            .clone()
            .submit(v1::SubmitWorkflowRequest {
                workflow: Some(workflow.into_proto()),
                idempotency_key: idempotency_key.to_owned(),
            })
            .await?
            .into_inner();
        Ok((response.workflow_id, response.duplicate))
    }

    /// The workflow and each step's state now; with `include_json`, step results as proto3
    /// JSON too.
    pub async fn workflow(&self, id: &str, include_json: bool) -> Result<v1::WorkflowInfo, Error> {
        let request = v1::GetWorkflowRequest {
            workflow_id: id.to_owned(),
            include_json,
        };
        Ok(self.workflows.clone().get(request).await?.into_inner())
    }

    /// Waits up to `timeout` (at most 5 minutes) for the workflow to end.
    pub async fn wait_workflow(
        &self,
        id: &str,
        timeout: Duration,
        include_json: bool,
    ) -> Result<v1::WorkflowInfo, Error> {
        let request = v1::WaitWorkflowRequest {
            workflow_id: id.to_owned(),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json,
        };
        Ok(self.workflows.clone().wait(request).await?.into_inner())
    }

    /// The workflow now, then on every change until it ended (the last item is its end).
    pub async fn watch_workflow(
        &self,
        id: &str,
        include_json: bool,
    ) -> Result<tonic::Streaming<v1::WorkflowInfo>, Error> {
        let request = v1::WatchWorkflowRequest {
            workflow_id: id.to_owned(),
            include_json,
        };
        Ok(self.workflows.clone().watch(request).await?.into_inner())
    }

    /// Cancels a workflow: no further step starts; running ones are told to stop.
    pub async fn cancel_workflow(&self, id: &str) -> Result<v1::WorkflowInfo, Error> {
        let request = v1::CancelWorkflowRequest {
            workflow_id: id.to_owned(),
        };
        Ok(self.workflows.clone().cancel(request).await?.into_inner())
    }
}
