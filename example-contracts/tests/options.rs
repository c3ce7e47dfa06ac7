//! Task options as the example contracts declare them, read from their descriptors.

use std::time::Duration;

use taskwire::task::{Options, TaskType};

#[test]
fn options_are_read_from_the_proto() {
    let tasks = TaskType::all_in(taskwire_examples::FILE_DESCRIPTOR_SET).expect("descriptors");
    let add = tasks
        .iter()
        .find(|t| t.name.as_str() == "examples.magic.v1.Magic/Add")
        .expect("Magic/Add");
    assert_eq!(add.options.max_attempts, 3);
    assert_eq!(add.options.timeout, Some(Duration::from_secs(10)));
    assert_eq!(add.input.full_name(), "examples.magic.v1.AddArgs");
    let panic = tasks
        .iter()
        .find(|t| t.name.as_str() == "examples.chaos.v1.Chaos/Panic")
        .expect("Chaos/Panic");
    assert_eq!(panic.options, Options::default());
    assert!(
        !tasks
            .iter()
            .any(|t| t.name.service() == "taskwire.v1.Tasks")
    );
}
