//! A workflow's shape and types: which step takes which results, checked against the task
//! types' contracts at submit, and how a step's input is made from those results.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};
use taskwire::task::{Name, TaskType};
use taskwire::v1;
use taskwire_protocol::workflow::MAX_STEPS;

use crate::{Error, Gateway, payload};

/// The full name of the input an on_failure step takes.
const FAILURE_INPUT: &str = "taskwire.v1.WorkflowFailure";

/// The graph of a workflow: each step's inputs and dependents, by index. The on_failure step,
/// when there is one, has the index after the last step.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) after: Vec<Vec<usize>>,
    pub(crate) dependents: Vec<Vec<usize>>,
    /// The steps nothing takes the result of: the workflow succeeds when all of them did.
    pub(crate) last: Vec<usize>,
}

fn bad(step: &str, why: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("workflow step {step:?}: {why}"))
}

impl Plan {
    /// The graph of `workflow`: names unique and valid, every `after` naming an earlier-defined
    /// or later step, no cycle.
    pub(crate) fn of(workflow: &v1::Workflow) -> Result<Self, Error> {
        let steps = &workflow.steps;
        if steps.is_empty() {
            return Err(Error::BadRequest("the workflow has no steps".into()));
        }
        if steps.len() > MAX_STEPS {
            return Err(Error::BadRequest(format!(
                "the workflow has {} steps; at most {MAX_STEPS}",
                steps.len()
            )));
        }
        let mut index = HashMap::new();
        for (i, step) in steps.iter().chain(workflow.on_failure.iter()).enumerate() {
            let name = &step.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    name,
                    "a step's name is 1 to 64 letters, digits, `-` or `_`",
                ));
            }
            if index.insert(name.as_str(), i).is_some() {
                return Err(bad(name, "two steps have this name"));
            }
        }
        let mut after = Vec::with_capacity(steps.len());
        for step in steps {
            let mut deps = Vec::with_capacity(step.after.len());
            for dep in &step.after {
                match index.get(dep.as_str()) {
                    Some(&d) if d < steps.len() && dep != &step.name && !deps.contains(&d) => {
                        deps.push(d)
                    }
                    Some(_) if dep == &step.name => {
                        return Err(bad(&step.name, "a step cannot come after itself"));
                    }
                    Some(&d) if d < steps.len() => {
                        return Err(bad(&step.name, format!("{dep:?} is in `after` twice")));
                    }
                    Some(_) => {
                        return Err(bad(
                            &step.name,
                            format!("{dep:?} is the on_failure step, which no step comes after"),
                        ));
                    }
                    None => {
                        return Err(bad(&step.name, format!("no step is named {dep:?}")));
                    }
                }
            }
            after.push(deps);
        }
        if let Some(on_failure) = &workflow.on_failure
            && !on_failure.after.is_empty()
        {
            return Err(bad(
                &on_failure.name,
                "the on_failure step takes no `after`: it starts when the workflow fails",
            ));
        }
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, deps) in after.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        // Kahn's algorithm: every step reachable in order, or there is a cycle.
        let mut waiting: Vec<usize> = after.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
        let mut seen = 0;
        while let Some(i) = ready.pop() {
            seen += 1;
            for &m in &dependents[i] {
                waiting[m] -= 1;
                if waiting[m] == 0 {
                    ready.push(m);
                }
            }
        }
        if seen < steps.len() {
            let stuck = (0..steps.len())
                .find(|&i| waiting[i] > 0)
                .map_or("", |i| steps[i].name.as_str());
            return Err(bad(
                stuck,
                "its `after` steps wait on each other in a cycle",
            ));
        }
        let last = (0..steps.len())
            .filter(|&i| dependents[i].is_empty())
            .collect();
        Ok(Self {
            after,
            dependents,
            last,
        })
    }
}

/// A step: the workflow's step `i`, or its on_failure step.
pub(crate) fn step(workflow: &v1::Workflow, i: usize) -> Option<&v1::Step> {
    workflow
        .steps
        .get(i)
        .or_else(|| (i == workflow.steps.len()).then_some(workflow.on_failure.as_ref()?))
}

/// The arguments of a step as protobuf bytes (empty when it has none).
pub(crate) fn args_of(step: &v1::Step) -> Bytes {
    match &step.args {
        Some(v1::step::Args::ArgsProto(bytes)) => Bytes::from(bytes.clone()),
        _ => Bytes::new(),
    }
}

impl Gateway {
    /// Checks every step against its task type's contract, and returns the workflow with every
    /// step's arguments as protobuf bytes.
    pub(crate) async fn check_workflow(
        &self,
        mut workflow: v1::Workflow,
    ) -> Result<(v1::Workflow, Plan), Error> {
        let plan = Plan::of(&workflow)?;
        let mut types = Vec::new();
        for step in workflow.steps.iter().chain(workflow.on_failure.iter()) {
            let name = Name::parse(&step.task).map_err(|e| bad(&step.name, e))?;
            let task_type = self
                .registry
                .get(&name)
                .await
                .map_err(|e| bad(&step.name, e))?;
            types.push(task_type);
        }
        let count = workflow.steps.len();
        let maps: Vec<bool> = workflow
            .steps
            .iter()
            .map(|s| !s.for_each.is_empty())
            .collect();
        let names: Vec<String> = workflow.steps.iter().map(|s| s.name.clone()).collect();
        for (i, step) in workflow
            .steps
            .iter_mut()
            .chain(workflow.on_failure.iter_mut())
            .enumerate()
        {
            let task_type = &types[i];
            check_options(step)?;
            let deps = plan.after.get(i).map(Vec::as_slice).unwrap_or_default();
            let outputs: Vec<&TaskType> = deps.iter().map(|&d| types[d].as_ref()).collect();
            if !step.for_each.is_empty() {
                check_map(step, task_type, &outputs, i == count)?;
            } else {
                check_input(step, task_type, &outputs, i == count)?;
            }
            if let Some(&map) = deps.iter().find(|&&d| maps[d])
                && (deps.len() > 1 || step.collect.is_empty())
            {
                return Err(bad(
                    &step.name,
                    format!(
                        "it comes after the map step {:?}, which gives a result per element: take them all with collect, and come after that step alone",
                        names[map]
                    ),
                ));
            }
            // Arguments are stored as protobuf bytes, checked against the input message.
            let args = match step.args.take() {
                Some(v1::step::Args::ArgsProto(bytes)) => Some(
                    payload::from_proto(&task_type.input, Bytes::from(bytes), self.max_payload)
                        .map_err(|e| bad(&step.name, e))?
                        .0,
                ),
                Some(v1::step::Args::ArgsJson(json)) => Some(
                    payload::from_json(&task_type.input, &json, self.max_payload)
                        .map_err(|e| bad(&step.name, e))?
                        .0,
                ),
                None => None,
            };
            step.args = args.map(|a| v1::step::Args::ArgsProto(a.to_vec()));
        }
        Ok((workflow, plan))
    }
}

/// A map step: one task per element of a repeated field of the one result it takes.
fn check_map(
    step: &v1::Step,
    task_type: &TaskType,
    outputs: &[&TaskType],
    on_failure: bool,
) -> Result<(), Error> {
    let name = &step.name;
    if on_failure || outputs.len() != 1 {
        return Err(bad(
            name,
            "a map (for_each) comes after exactly one step, whose result holds its elements",
        ));
    }
    if step.args.is_some() || !step.fields.is_empty() || !step.collect.is_empty() {
        return Err(bad(
            name,
            "a map's tasks each take their element as input: give it no args, fields or collect",
        ));
    }
    let (dep, output) = (&step.after[0], &outputs[0].output);
    let Some(field) = output.get_field_by_name(&step.for_each) else {
        return Err(bad(
            name,
            format!(
                "step {dep:?} gives {}, which has no field {:?} to map over",
                output.full_name(),
                step.for_each
            ),
        ));
    };
    match field.kind() {
        Kind::Message(element) if field.is_list() => {
            if element.full_name() != task_type.input.full_name() {
                return Err(bad(
                    name,
                    format!(
                        "{}.{} holds {}, but {} takes {}",
                        output.full_name(),
                        step.for_each,
                        element.full_name(),
                        task_type.name,
                        task_type.input.full_name()
                    ),
                ));
            }
            Ok(())
        }
        _ => Err(bad(
            name,
            format!(
                "{}.{} is {}, not a repeated message field to map over",
                output.full_name(),
                step.for_each,
                kind_name(&field)
            ),
        )),
    }
}

/// The elements of a map step: the messages of its `for_each` field in the result it takes.
pub(crate) fn elements(
    step: &v1::Step,
    output: &MessageDescriptor,
    result: Bytes,
) -> Result<Vec<Bytes>, String> {
    let message = DynamicMessage::decode(output.clone(), result)
        .map_err(|e| format!("the result does not decode as {}: {e}", output.full_name()))?;
    let list = message
        .get_field_by_name(&step.for_each)
        .ok_or_else(|| format!("the result has no field {:?}", step.for_each))?;
    let Some(list) = list.as_list() else {
        return Err(format!("{:?} is not a list", step.for_each));
    };
    list.iter()
        .map(|v| {
            v.as_message()
                .map(|m| Bytes::from(m.encode_to_vec()))
                .ok_or_else(|| format!("an element of {:?} is not a message", step.for_each))
        })
        .collect()
}

fn check_options(step: &v1::Step) -> Result<(), Error> {
    let Some(options) = &step.options else {
        return Ok(());
    };
    for (set, what) in [
        (!options.idempotency_key.is_empty(), "idempotency_key"),
        (options.not_before.is_some(), "not_before"),
        (options.countdown.is_some(), "countdown"),
        (options.expires_at.is_some(), "expires_at"),
    ] {
        if set {
            return Err(bad(
                &step.name,
                format!(
                    "{what} does not apply to a workflow step (a step starts when its inputs are ready; its task id comes from the workflow)"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a step's input can be made from what it is given: its arguments, and the outputs of
/// the steps it comes after.
fn check_input(
    step: &v1::Step,
    task_type: &TaskType,
    outputs: &[&TaskType],
    on_failure: bool,
) -> Result<(), Error> {
    let input = &task_type.input;
    let name = &step.name;
    let has_args = step.args.is_some();
    if on_failure {
        if input.full_name() != FAILURE_INPUT {
            return Err(bad(
                name,
                format!(
                    "an on_failure step's task takes {FAILURE_INPUT}, but {} takes {}",
                    task_type.name,
                    input.full_name()
                ),
            ));
        }
        if has_args || !step.fields.is_empty() || !step.collect.is_empty() {
            return Err(bad(
                name,
                "an on_failure step's input is the failure: give it no args, fields or collect",
            ));
        }
        return Ok(());
    }
    if outputs.is_empty() {
        if !step.fields.is_empty() || !step.collect.is_empty() {
            return Err(bad(
                name,
                "fields and collect take the results of the steps in `after`, and it has none",
            ));
        }
        if !has_args {
            return Err(bad(
                name,
                format!(
                    "a first step needs its arguments (args_proto or args_json, a {})",
                    input.full_name()
                ),
            ));
        }
        return Ok(());
    }
    if !step.collect.is_empty() {
        if !step.fields.is_empty() {
            return Err(bad(name, "give fields or collect, not both"));
        }
        let Some(field) = input.get_field_by_name(&step.collect) else {
            return Err(bad(
                name,
                format!(
                    "{} has no field {:?} to collect into",
                    input.full_name(),
                    step.collect
                ),
            ));
        };
        let element = match field.kind() {
            Kind::Message(m) if field.is_list() => m,
            _ => {
                return Err(bad(
                    name,
                    format!(
                        "{}.{} is not a repeated message field; collect needs one",
                        input.full_name(),
                        step.collect
                    ),
                ));
            }
        };
        for (dep, output) in step.after.iter().zip(outputs) {
            if output.output.full_name() != element.full_name() {
                return Err(bad(
                    name,
                    format!(
                        "{}.{} holds {}, but step {dep:?} ({}) gives {}",
                        input.full_name(),
                        step.collect,
                        element.full_name(),
                        output.name,
                        output.output.full_name()
                    ),
                ));
            }
        }
        return Ok(());
    }
    if outputs.len() > 1 {
        return Err(bad(
            name,
            format!(
                "it comes after {} steps: name the repeated field of {} that takes their results in collect",
                outputs.len(),
                input.full_name()
            ),
        ));
    }
    let (dep, output) = (&step.after[0], &outputs[0].output);
    if step.fields.is_empty() {
        if output.full_name() != input.full_name() {
            return Err(bad(
                name,
                format!(
                    "{} takes {}, but step {dep:?} gives {}: give fields to map the result (e.g. {{from: \"{}\", to: \"{}\"}})",
                    task_type.name,
                    input.full_name(),
                    output.full_name(),
                    output
                        .fields()
                        .next()
                        .map_or("".into(), |f| f.name().to_owned()),
                    input
                        .fields()
                        .next()
                        .map_or("".into(), |f| f.name().to_owned()),
                ),
            ));
        }
        if has_args {
            return Err(bad(
                name,
                format!(
                    "its input is the result of step {dep:?}; give fields to combine that result with args"
                ),
            ));
        }
        return Ok(());
    }
    let mut targets = Vec::new();
    for mapping in &step.fields {
        let Some(from) = output.get_field_by_name(&mapping.from) else {
            return Err(bad(
                name,
                format!(
                    "step {dep:?} gives {}, which has no field {:?}",
                    output.full_name(),
                    mapping.from
                ),
            ));
        };
        let Some(to) = input.get_field_by_name(&mapping.to) else {
            return Err(bad(
                name,
                format!("{} has no field {:?}", input.full_name(), mapping.to),
            ));
        };
        if targets.contains(&mapping.to) {
            return Err(bad(name, format!("two fields map to {:?}", mapping.to)));
        }
        targets.push(mapping.to.clone());
        if from.kind() != to.kind()
            || from.is_list() != to.is_list()
            || from.is_map() != to.is_map()
        {
            return Err(bad(
                name,
                format!(
                    "{}.{} is {} but {}.{} is {}",
                    output.full_name(),
                    mapping.from,
                    kind_name(&from),
                    input.full_name(),
                    mapping.to,
                    kind_name(&to)
                ),
            ));
        }
    }
    Ok(())
}

fn kind_name(field: &prost_reflect::FieldDescriptor) -> String {
    let kind = match field.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.is_list() {
        format!("repeated {kind}")
    } else {
        kind
    }
}

/// The input of a step that comes after others, from their outputs (in `after`'s order) and
/// its own arguments. Types were checked at submit; a task type changed since is an error.
pub(crate) fn build_input(
    step: &v1::Step,
    input: &MessageDescriptor,
    outputs: &[(MessageDescriptor, Bytes)],
) -> Result<Bytes, String> {
    if step.fields.is_empty() && step.collect.is_empty() {
        return outputs
            .first()
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| "no result to pass on".to_owned());
    }
    let mut message = DynamicMessage::decode(input.clone(), args_of(step))
        .map_err(|e| format!("its arguments do not decode as {}: {e}", input.full_name()))?;
    let decode = |(descriptor, bytes): &(MessageDescriptor, Bytes)| {
        DynamicMessage::decode(descriptor.clone(), bytes.clone()).map_err(|e| {
            format!(
                "a result does not decode as {}: {e}",
                descriptor.full_name()
            )
        })
    };
    if !step.collect.is_empty() {
        let mut list = Vec::with_capacity(outputs.len());
        for output in outputs {
            list.push(Value::Message(decode(output)?));
        }
        message
            .try_set_field_by_name(&step.collect, Value::List(list))
            .map_err(|e| format!("cannot collect into {}: {e}", step.collect))?;
    } else {
        let output = decode(outputs.first().ok_or("no result to pass on")?)?;
        for mapping in &step.fields {
            let value = output
                .get_field_by_name(&mapping.from)
                .ok_or_else(|| format!("the result has no field {:?}", mapping.from))?
                .into_owned();
            message
                .try_set_field_by_name(&mapping.to, value)
                .map_err(|e| format!("cannot set {}: {e}", mapping.to))?;
        }
    }
    Ok(message.encode_to_vec().into())
}
