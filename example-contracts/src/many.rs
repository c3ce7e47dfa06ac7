//! Many task types at once, made at run time: services `examples.many.v1.ManyNNNN`, ten tasks
//! each (`Task0` to `Task9`), every task answering its argument (`NumberNNNN { int64 n = 1; }`)
//! back. A worker serving them shows what a large registry costs the gateway, the dashboard
//! and an idle worker; `taskwire bench --task-types N` uses them.

use bytes::Bytes;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    MethodDescriptorProto, ServiceDescriptorProto,
};
use taskwire::service::{BoxFuture, Service, TaskDef};
use taskwire::{TaskContext, TaskError};

/// The tasks of one generated service.
pub const TASKS_PER_SERVICE: usize = 10;

/// The package of the generated services.
pub const PACKAGE: &str = "examples.many.v1";

/// One generated service: `examples.many.v1.Many{index:04}`.
pub struct ManyService {
    name: String,
    tasks: Vec<TaskDef>,
    file_descriptor_set: Vec<u8>,
}

/// The name of task `task` (0 to 9) of service `service`.
pub fn task_name(service: usize, task: usize) -> String {
    format!("{PACKAGE}.Many{service:04}/Task{task}")
}

/// Services enough for `task_types` task types (the last one may serve fewer tasks).
pub fn services(task_types: usize) -> Vec<ManyService> {
    (0..task_types.div_ceil(TASKS_PER_SERVICE))
        .map(|service| {
            let tasks = (task_types - service * TASKS_PER_SERVICE).min(TASKS_PER_SERVICE);
            ManyService::new(service, tasks)
        })
        .collect()
}

impl ManyService {
    /// Service number `index` with `tasks` tasks.
    pub fn new(index: usize, tasks: usize) -> Self {
        let service = format!("Many{index:04}");
        let message = format!("Number{index:04}");
        let full_message = format!(".{PACKAGE}.{message}");
        let file = FileDescriptorProto {
            name: Some(format!("examples/many/v1/many_{index:04}.proto")),
            package: Some(PACKAGE.to_owned()),
            syntax: Some("proto3".to_owned()),
            message_type: vec![DescriptorProto {
                name: Some(message.clone()),
                field: vec![FieldDescriptorProto {
                    name: Some("n".to_owned()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::Int64 as i32),
                    json_name: Some("n".to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some(service.clone()),
                method: (0..tasks)
                    .map(|task| MethodDescriptorProto {
                        name: Some(format!("Task{task}")),
                        input_type: Some(full_message.clone()),
                        output_type: Some(full_message.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = FileDescriptorSet { file: vec![file] }.encode_to_vec();
        let full_message = format!("{PACKAGE}.{message}");
        let tasks = (0..tasks)
            .map(|task| TaskDef {
                name: task_name(index, task).into(),
                input_type: full_message.clone().into(),
                output_type: full_message.clone().into(),
            })
            .collect();
        Self {
            name: format!("{PACKAGE}.{service}"),
            tasks,
            file_descriptor_set: set,
        }
    }
}

impl Service for ManyService {
    fn name(&self) -> &str {
        &self.name
    }

    fn tasks(&self) -> &[TaskDef] {
        &self.tasks
    }

    fn file_descriptor_set(&self) -> &[u8] {
        &self.file_descriptor_set
    }

    fn call(
        &self,
        task: &str,
        _ctx: TaskContext,
        args: Bytes,
    ) -> BoxFuture<Result<Vec<u8>, TaskError>> {
        // The argument and the result are the same message: the answer is the argument.
        let answer = if self.tasks.iter().any(|t| t.name == task) {
            Ok(args.to_vec())
        } else {
            Err(TaskError::permanent(format!("no task {task} here")))
        };
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskwire::task::TaskType;

    #[test]
    fn every_generated_task_is_a_task_type() {
        let services = services(25);
        assert_eq!(services.len(), 3);
        let mut names = Vec::new();
        for service in &services {
            let types = TaskType::all_in(service.file_descriptor_set())
                .expect("a generated service describes its task types");
            assert_eq!(types.len(), service.tasks().len());
            names.extend(types.into_iter().map(|t| t.name.to_string()));
        }
        assert_eq!(names.len(), 25);
        assert_eq!(names[0], "examples.many.v1.Many0000/Task0");
        assert_eq!(names[24], "examples.many.v1.Many0002/Task4");
    }
}
