//! Deployment objects generated from the task contracts: what `deploy/k8s` commits is what the
//! generator makes, and the generator follows the contracts in `proto/`.

use std::path::PathBuf;

use taskwire::task::TaskType;
use taskwire_cli::cmd::k8s::{Options, scaled_objects};
use taskwire_protocol as broker;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn options(services: &[&str]) -> Options {
    Options {
        proto_dir: root().join("proto"),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        namespace: "taskwire".into(),
        nats_monitoring: "nats.taskwire.svc.cluster.local:8222".into(),
        account: "$G".into(),
        min_replicas: 1,
        max_replicas: 20,
    }
}

#[test]
fn the_committed_scaled_objects_are_what_the_command_prints() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskwire"))
        .args(["k8s", "scaledobjects", "--proto-dir"])
        .arg(root().join("proto"))
        .args(["--service", "examples.magic.v1.Magic"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(root().join("deploy/k8s/base/keda/scaledobjects.yaml"))?;
    assert_eq!(
        String::from_utf8(out.stdout)?,
        committed,
        "regenerate: taskwire k8s scaledobjects --proto-dir proto --service examples.magic.v1.Magic > deploy/k8s/base/keda/scaledobjects.yaml"
    );
    Ok(())
}

#[test]
fn every_task_consumer_in_proto_gets_a_trigger_on_its_service_worker() -> anyhow::Result<()> {
    let yaml = scaled_objects(&options(&[]))?;
    let objects: Vec<&str> = yaml.split("---\n").skip(1).collect();
    let mut expected = Vec::new();
    for set in [
        taskwire_examples::magic::v1::FILE_DESCRIPTOR_SET,
        taskwire_examples::chaos::v1::FILE_DESCRIPTOR_SET,
        taskwire_examples::flow::v1::FILE_DESCRIPTOR_SET,
    ] {
        for task in TaskType::all_in(set)? {
            if !expected.iter().any(|t: &TaskType| t.name == task.name) {
                expected.push(task);
            }
        }
    }
    assert_eq!(objects.len(), 3, "{yaml}");
    for (service, deployment) in [
        ("examples.chaos.v1.Chaos", "chaos-worker"),
        ("examples.flow.v1.Flow", "flow-worker"),
        ("examples.magic.v1.Magic", "magic-worker"),
    ] {
        let object = objects
            .iter()
            .find(|o| o.contains(&format!("taskwire.io/service: {service}\n")))
            .unwrap_or_else(|| panic!("no ScaledObject for {service}:\n{yaml}"));
        assert!(
            object.contains(&format!("  name: {deployment}\n")),
            "{object}"
        );
        let tasks: Vec<&TaskType> = expected
            .iter()
            .filter(|t| t.name.service() == service)
            .collect();
        assert_eq!(
            object.matches("- type: nats-jetstream").count(),
            tasks.len() * 3,
            "{object}"
        );
        for task in tasks {
            let lag = if task.name.as_str() == "examples.chaos.v1.Chaos/Sleep" {
                10
            } else {
                100
            };
            for priority in broker::PRIORITIES {
                let consumer = broker::consumer_name(&task.name, priority);
                let trigger =
                    format!("consumer: \"{consumer}\"\n        lagThreshold: \"{lag}\"\n");
                assert!(
                    object.contains(&trigger),
                    "{task:?}: no {trigger:?} in\n{object}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn an_unknown_service_is_a_clear_error() {
    let err =
        scaled_objects(&options(&["examples.magic.v1.Magik"])).expect_err("an unknown service");
    let text = err.to_string();
    assert!(
        text.contains("no service examples.magic.v1.Magik")
            && text.contains("examples.magic.v1.Magic"),
        "{text}"
    );
}
