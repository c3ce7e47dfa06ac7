//! Rounds of taskwire and the bare async-nats flow, interleaved on the same server, so that
//! their ratio holds whatever else the machine does meanwhile.

use serde_json::{Map, Value, json};

use super::cpu::CpuMeter;
use super::load::{Sample, load};
use super::raw::raw_jetstream;
use super::stack::Stack;
use super::{median, round};

/// What one round measured.
pub(super) struct Round {
    pub(super) tasks_per_sec: f64,
    pub(super) raw_per_sec: f64,
    /// CPU time per task of each process, taskwire's run and the raw one.
    cpu: (Map<String, Value>, Map<String, Value>),
}

impl Round {
    fn ratio(&self) -> f64 {
        self.tasks_per_sec / self.raw_per_sec
    }
}

/// The rounds and every submit-and-wait of taskwire's runs.
pub(super) struct Compared {
    pub(super) rounds: Vec<Round>,
    pub(super) samples: Vec<Sample>,
}

/// The settings of a comparison.
pub(super) struct Settings<'a> {
    pub(super) nats_url: &'a str,
    /// The nats-server processes, by name, whose CPU time counts.
    pub(super) servers: &'a [(&'static str, Option<u32>)],
    pub(super) replicas: usize,
    pub(super) concurrency: usize,
    pub(super) tasks: usize,
    pub(super) rounds: usize,
    /// The server's monitoring endpoint (`http://host:port`), for the messages a task costs.
    pub(super) monitoring: Option<&'a str>,
}

/// Messages the server took in and sent out so far, from `/varz`.
pub(super) async fn server_messages(monitoring: Option<&str>) -> Option<(u64, u64)> {
    let host = monitoring?.strip_prefix("http://")?;
    let varz: Value =
        serde_json::from_str(&taskwire_supervisor::http_get(host, "/varz").await.ok()?).ok()?;
    Some((varz["in_msgs"].as_u64()?, varz["out_msgs"].as_u64()?))
}

/// Messages per task in and out of the server between two readings of `/varz`.
pub(super) async fn messages_per_task(
    monitoring: Option<&str>,
    before: Option<(u64, u64)>,
    tasks: usize,
    cpu: &mut Map<String, Value>,
) {
    if let (Some((in_before, out_before)), Some((in_after, out_after))) =
        (before, server_messages(monitoring).await)
    {
        let per_task = |n: u64| round(n as f64 / tasks.max(1) as f64, 2);
        cpu.insert(
            "server_msgs_in_per_task".into(),
            per_task(in_after.saturating_sub(in_before)).into(),
        );
        cpu.insert(
            "server_msgs_out_per_task".into(),
            per_task(out_after.saturating_sub(out_before)).into(),
        );
    }
}

/// `rounds` rounds, each `tasks` tasks through the gateway and then as many with bare
/// async-nats.
pub(super) async fn interleaved(
    stack: &Stack,
    settings: &Settings<'_>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Compared> {
    let mut processes: Vec<(&'static str, Option<u32>)> = settings.servers.to_vec();
    processes.extend([
        ("gateway", stack.gateway_pid),
        ("worker", stack.worker_pid),
        ("bench", Some(std::process::id())),
    ]);
    let mut rounds = Vec::new();
    let mut samples = Vec::new();
    for number in 1..=settings.rounds {
        progress(&format!(
            "round {number} of {}: {} tasks through the gateway, {} in flight",
            settings.rounds, settings.tasks, settings.concurrency
        ));
        let messages = server_messages(settings.monitoring).await;
        let meter = CpuMeter::start(&processes);
        let started = std::time::Instant::now();
        let done = load(&stack.client, settings.concurrency, settings.tasks).await;
        let tasks_per_sec = settings.tasks as f64 / started.elapsed().as_secs_f64();
        let mut taskwire_cpu = meter.per_task(settings.tasks);
        messages_per_task(
            settings.monitoring,
            messages,
            settings.tasks,
            &mut taskwire_cpu,
        )
        .await;
        samples.extend(done);

        progress(&format!(
            "round {number} of {}: the same with bare async-nats",
            settings.rounds
        ));
        let messages = server_messages(settings.monitoring).await;
        let meter = CpuMeter::start(&processes);
        let raw_per_sec = raw_jetstream(
            settings.nats_url,
            settings.replicas,
            settings.concurrency,
            settings.tasks,
        )
        .await?
        .tasks_per_sec;
        let mut raw_cpu = meter.per_task(settings.tasks);
        messages_per_task(settings.monitoring, messages, settings.tasks, &mut raw_cpu).await;
        rounds.push(Round {
            tasks_per_sec,
            raw_per_sec,
            cpu: (taskwire_cpu, raw_cpu),
        });
    }
    Ok(Compared { rounds, samples })
}

impl Compared {
    /// The figures: medians over the rounds, each round's, and the CPU time per task of the
    /// round with the median ratio.
    pub(super) fn report(&self) -> Map<String, Value> {
        let tasks_per_sec = median(self.rounds.iter().map(|r| r.tasks_per_sec));
        let raw = median(self.rounds.iter().map(|r| r.raw_per_sec));
        let ratio = median(self.rounds.iter().map(Round::ratio));
        let mut by_ratio: Vec<&Round> = self.rounds.iter().collect();
        by_ratio.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        let middle = by_ratio.get(by_ratio.len() / 2);
        let mut report = Map::new();
        report.insert("tasks_per_sec".into(), round(tasks_per_sec, 1).into());
        report.insert("raw_jetstream_tasks_per_sec".into(), round(raw, 1).into());
        report.insert("ratio_to_raw".into(), round(ratio, 3).into());
        report.insert(
            "rounds".into(),
            self.rounds
                .iter()
                .map(|r| {
                    json!({
                        "tasks_per_sec": round(r.tasks_per_sec, 1),
                        "raw_jetstream_tasks_per_sec": round(r.raw_per_sec, 1),
                        "ratio_to_raw": round(r.ratio(), 3),
                    })
                })
                .collect(),
        );
        if let Some(middle) = middle {
            report.insert(
                "per_task".into(),
                json!({ "taskwire": middle.cpu.0, "raw": middle.cpu.1 }),
            );
        }
        let mut submit: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.submit_ms)
            .collect();
        let mut e2e: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.e2e_ms)
            .collect();
        submit.sort_by(f64::total_cmp);
        e2e.sort_by(f64::total_cmp);
        for (key, sorted, p) in [
            ("submit_p50_ms", &submit, 50.0),
            ("submit_p99_ms", &submit, 99.0),
            ("e2e_p50_ms", &e2e, 50.0),
            ("e2e_p99_ms", &e2e, 99.0),
        ] {
            report.insert(key.into(), round(super::percentile(sorted, p), 3).into());
        }
        report
    }
}
