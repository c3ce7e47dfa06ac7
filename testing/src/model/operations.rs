//! The operations the model drives: submits with their options, schedule changes, and the
//! wait for every task to end.

use super::*;

/// A burst: `count` tasks of Limited or Paced with one label, submitted at once, so that its
/// limits (per label or not) have something to hold back.
pub(crate) async fn burst(
    client: &Client,
    rng: &mut Rng,
    tasks: &mut Vec<Task>,
    keys: &mut HashMap<(&'static str, String), String>,
    violations: &mut Vec<Violation>,
) {
    let name = if rng.chance(50) { LIMITED } else { PACED };
    let label = LABELS[rng.below(LABELS.len() as u64) as usize];
    for _ in 0..8 {
        submit(client, rng, tasks, keys, violations, Some((name, label))).await;
    }
}

pub(crate) async fn submit(
    client: &Client,
    rng: &mut Rng,
    tasks: &mut Vec<Task>,
    keys: &mut HashMap<(&'static str, String), String>,
    violations: &mut Vec<Violation>,
    forced: Option<(&'static str, &'static str)>,
) {
    let name = match (forced, rng.below(10)) {
        (Some((name, _)), _) => name,
        (None, 0..=4) => SLEEP,
        (None, 5..=6) => FLAKY,
        (None, 7..=8) => LIMITED,
        (None, _) => PACED,
    };
    let label = match (forced, name) {
        (Some((_, label)), _) => label,
        (None, LIMITED | PACED) => LABELS[rng.below(LABELS.len() as u64) as usize],
        _ => "",
    };
    let args: Vec<u8> = match name {
        FLAKY => prost::Message::encode_to_vec(&FlakyArgs {
            succeed_on_attempt: rng.below(5) as u32,
            permanent: rng.chance(20),
            ..Default::default()
        }),
        _ => prost::Message::encode_to_vec(&SleepArgs {
            millis: if name == LIMITED {
                20 + rng.below(200)
            } else {
                rng.below(200)
            },
            label: label.into(),
        }),
    };
    let max_attempts = 1 + rng.below(4) as u32;
    let mut options = SubmitOptions::default().max_attempts(max_attempts);
    let now = SystemTime::now();
    let mut not_before = None;
    if forced.is_none() && rng.chance(15) {
        let delay = Duration::from_millis(500 + rng.below(2500));
        options = options.countdown(delay);
        not_before = Some(now + delay);
    }
    let mut expires_at = None;
    if rng.chance(10) {
        let ttl = Duration::from_millis(200 + rng.below(2000));
        options = options.ttl(ttl);
        expires_at = Some(not_before.unwrap_or(now) + ttl);
    }
    let priority = match rng.below(3) {
        0 => v1::Priority::High,
        1 => v1::Priority::Low,
        _ => v1::Priority::Normal,
    };
    options = options.priority(priority);
    let key = (forced.is_none() && rng.chance(15)).then(|| format!("k{}", rng.below(12)));
    if let Some(key) = &key {
        options = options.idempotency_key(key.clone());
    }
    let answer = client
        .submit_raw(name, v1::submit_request::Args::ArgsProto(args), options)
        .await;
    let Ok(answer) = answer else {
        // Refused (the broker restarting): nothing was promised.
        return;
    };
    if let Some(key) = key {
        match keys.get(&(name, key.clone())) {
            Some(known) if *known != answer.task_id || !answer.duplicate => {
                violations.push(Violation {
                    guarantee: 6,
                    task: answer.task_id.clone(),
                    what: format!(
                        "key {key} of {name} answered {} (duplicate: {}) after {known}",
                        answer.task_id, answer.duplicate
                    ),
                });
                return;
            }
            Some(_) => return,
            None => {
                if answer.duplicate {
                    // Its first submission was answered while the broker restarted, say.
                    return;
                }
                keys.insert((name, key), answer.task_id.clone());
            }
        }
    } else if answer.duplicate {
        return;
    }
    tasks.push(Task {
        id: answer.task_id,
        name,
        max_attempts,
        not_before,
        expires_at,
        cancelled_at: None,
        replays: Vec::new(),
        waited: None,
        submitted_at: SystemTime::now(),
        parks: false,
        priority: Some(priority),
        label,
    });
}

pub(crate) async fn schedule(
    client: &Client,
    rng: &mut Rng,
    schedules: &mut Vec<(String, bool)>,
    n: usize,
) {
    match rng.below(4) {
        0 if schedules.len() < 3 => {
            let name = format!("model-{n}");
            // Every second: an interval, or a cron expression read in some time zone.
            let (when, time_zone) = if rng.chance(50) {
                let zones = ["", "Asia/Kathmandu", "America/New_York", "Europe/Berlin"];
                let zone = zones[rng.below(zones.len() as u64) as usize];
                (
                    v1::schedule::When::Cron("* * * * * *".into()),
                    zone.to_owned(),
                )
            } else {
                (
                    v1::schedule::When::Every(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    String::new(),
                )
            };
            let created = client
                .create_schedule(v1::Schedule {
                    name: name.clone(),
                    task: SLEEP.into(),
                    when: Some(when),
                    time_zone,
                    args: Some(v1::schedule::Args::ArgsJson(r#"{"millis":1}"#.into())),
                    options: Some(SubmitOptions::default().max_attempts(1).into_proto()),
                    ..Default::default()
                })
                .await;
            if created.is_ok() {
                schedules.push((name, false));
            }
        }
        1 => {
            if let Some(index) = pick_index(rng, schedules.len()) {
                let (name, paused) = schedules[index].clone();
                let changed = if paused {
                    client.resume_schedule(&name).await
                } else {
                    client.pause_schedule(&name).await
                };
                if let Ok(schedule) = changed {
                    schedules[index].1 = schedule.paused;
                }
            }
        }
        _ => {
            if let Some(index) = pick_index(rng, schedules.len())
                && client.delete_schedule(&schedules[index].0).await.is_ok()
            {
                schedules.swap_remove(index);
            }
        }
    }
}

/// Waits until every task has a final state (or `limit` passes); returns each one's last state.
pub(crate) async fn settle(
    client: &Client,
    tasks: &[Task],
    limit: Duration,
) -> HashMap<String, TaskState> {
    let deadline = Instant::now() + limit;
    let mut finals: HashMap<String, TaskState> = HashMap::new();
    loop {
        let open: Vec<String> = tasks
            .iter()
            .filter(|t| !finals.get(&t.id).copied().is_some_and(is_final))
            .map(|t| t.id.clone())
            .collect();
        if open.is_empty() || Instant::now() > deadline {
            return finals;
        }
        let looked: Vec<(String, Option<TaskState>)> = futures::stream::iter(open)
            .map(|id| async move {
                let state = client.get(&id, false).await.ok().map(|i| i.state());
                (id, state)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut moved = false;
        for (id, state) in looked {
            if let Some(state) = state {
                moved |= is_final(state);
                finals.insert(id, state);
            }
        }
        if !moved {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
