//! Schedules: the broker submits a task on every tick, once however many gateways run, across
//! gateway restarts; pause, resume and delete.

use std::process::Stdio;
use std::time::{Duration, Instant};

use taskwire::v1;
use taskwire_client::{Client, SubmitOptions};
use taskwire_testing::{Gateway, NatsServer, Worker, bin, eventually, tasks};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn ticking(name: &str, label: &str, cron: &str) -> v1::Schedule {
    v1::Schedule {
        name: name.into(),
        task: "examples.chaos.v1.Chaos/Sleep".into(),
        when: Some(v1::schedule::When::Cron(cron.into())),
        args: Some(v1::schedule::Args::ArgsJson(format!(
            r#"{{"millis":1,"label":"{label}"}}"#
        ))),
        options: Some(SubmitOptions::default().max_attempts(2).into_proto()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_schedule_fires_once_per_tick_with_two_gateways_and_after_a_restart() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let first = Gateway::start(&nats.url()).await?;
    let second = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let a = Client::connect(first.url()).await?;
    let b = Client::connect(second.url()).await?;
    eventually("both gateways to know the task", WAIT, || async {
        a.schedules().await.is_ok()
            && b.task_types()
                .await
                .is_ok_and(|t| t.iter().any(|t| t.name.ends_with("Chaos/Sleep")))
    })
    .await?;

    // Every second, six-field cron.
    let created = a
        .create_schedule(ticking("every-second", "tick", "* * * * * *"))
        .await?;
    assert!(!created.paused);
    let started = Instant::now();
    let listed = b.schedules().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "every-second");

    eventually("three ticks", WAIT, || async {
        tasks::journal_count("tick", "started") >= 3
    })
    .await?;
    // Two gateways, yet one task per tick: never more tasks than seconds passed (plus the one
    // under way).
    let fired = tasks::journal_count("tick", "started");
    let seconds = started.elapsed().as_secs() as usize;
    assert!(fired <= seconds + 1, "{fired} tasks in {seconds} s");

    // The gateway that created it goes away; the broker keeps firing.
    first.stop().await?;
    let before = tasks::journal_count("tick", "started");
    eventually("ticks after the gateway stopped", WAIT, || async {
        tasks::journal_count("tick", "started") >= before + 2
    })
    .await?;
    let restarted = Gateway::start(&nats.url()).await?;
    let a = Client::connect(restarted.url()).await?;
    assert_eq!(a.schedule("every-second").await?.task, created.task);

    // Paused: at most the tick already under way, then nothing.
    let paused = b.pause_schedule("every-second").await?;
    assert!(paused.paused);
    let at_pause = tasks::journal_count("tick", "started");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after_pause = tasks::journal_count("tick", "started");
    assert!(after_pause <= at_pause + 1, "{at_pause} -> {after_pause}");
    assert!(a.schedule("every-second").await?.paused);

    // Resumed: it fires again.
    a.resume_schedule("every-second").await?;
    eventually("ticks after resume", WAIT, || async {
        tasks::journal_count("tick", "started") >= after_pause + 2
    })
    .await?;

    // The command line lists it.
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["schedule", "list"])
        .env("TASKWIRE_GATEWAY_URL", restarted.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout)?;
    assert!(listed.contains(r#""name":"every-second""#), "{listed}");

    // Deleted: gone, and no more ticks.
    b.delete_schedule("every-second").await?;
    let err = a.schedule("every-second").await.expect_err("deleted");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(a.schedules().await?.is_empty());
    let at_delete = tasks::journal_count("tick", "started");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(tasks::journal_count("tick", "started") <= at_delete + 1);
    Ok(())
}

#[tokio::test]
async fn bad_schedules_are_refused_and_nothing_is_kept() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(taskwire_testing::examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;

    for (cron, hint) in [
        ("every other day", "fields"),
        ("@fortnightly", "@hourly"),
        ("61 * * * *", "cron"),
    ] {
        let err = client
            .create_schedule(ticking("bad", "never", cron))
            .await
            .expect_err(cron);
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{cron}: {err}");
        assert!(err.to_string().contains(hint), "{cron}: {err}");
    }
    let mut no_timing = ticking("bad", "never", "* * * * *");
    no_timing.when = None;
    let err = client
        .create_schedule(no_timing)
        .await
        .expect_err("no timing");
    assert!(err.to_string().contains("cron"), "{err}");
    let mut keyed = ticking("bad", "never", "* * * * *");
    keyed.options = Some(SubmitOptions::default().idempotency_key("k").into_proto());
    let err = client.create_schedule(keyed).await.expect_err("key");
    assert!(err.to_string().contains("idempotency_key"), "{err}");
    let err = client
        .create_schedule(ticking("no spaces allowed", "never", "* * * * *"))
        .await
        .expect_err("name");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(client.schedules().await?.is_empty());

    client
        .create_schedule(ticking("hourly", "hourly", "@hourly"))
        .await?;
    let err = client
        .create_schedule(ticking("hourly", "hourly", "@daily"))
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    assert_eq!(client.schedules().await?.len(), 1);
    Ok(())
}

/// Whole seconds since the epoch of a timestamp.
fn epoch(t: &prost_types::Timestamp) -> i64 {
    t.seconds
}

/// A cron schedule in a time zone: the broker takes and fires it, Get and List show its next
/// fire times in that zone (none while paused), the command line sets it; a zone that does not
/// exist, a zone with an interval and syntax the broker does not read are refused, and nothing
/// of them is kept.
#[tokio::test]
async fn a_cron_schedule_in_a_time_zone_fires_and_shows_when_it_fires_next() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    eventually("the gateway knows the task", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name.ends_with("Chaos/Sleep")))
    })
    .await?;

    // Every second of this minute and the next as Kathmandu's clock (UTC+05:45) shows them: the
    // broker fires it now only if it reads the expression there (in UTC those minutes are 45
    // minutes away), and the next fires fall in them.
    let utc_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        / 60
        % 60;
    let local = [(utc_minute + 45) % 60, (utc_minute + 46) % 60];
    let mut zoned = ticking(
        "kathmandu",
        "zoned",
        &format!("* {},{} * * * *", local[0], local[1]),
    );
    zoned.time_zone = "Asia/Kathmandu".into();
    let created = client.create_schedule(zoned).await?;
    assert_eq!(created.time_zone, "Asia/Kathmandu");
    assert_eq!(created.next_fires.len(), 5, "{created:?}");
    for fire in &created.next_fires {
        let minute = (epoch(fire) / 60 % 60) as u64;
        assert!(
            [utc_minute, (utc_minute + 1) % 60].contains(&minute),
            "{created:?}"
        );
    }
    eventually("two ticks", WAIT, || async {
        tasks::journal_count("zoned", "started") >= 2
    })
    .await?;
    client.delete_schedule("kathmandu").await?;

    // Daily at 09:00 in Berlin: 08:00 UTC in winter, 07:00 in summer, on the second.
    let mut berlin = ticking("berlin", "berlin", "0 9 * * *");
    berlin.time_zone = "Europe/Berlin".into();
    client.create_schedule(berlin).await?;
    let got = client.schedule("berlin").await?;
    assert_eq!(got.next_fires.len(), 5, "{got:?}");
    for fire in &got.next_fires {
        let of_day = fire.seconds.rem_euclid(86_400);
        assert!(of_day == 8 * 3600 || of_day == 7 * 3600, "{got:?}");
    }
    let paused = client.pause_schedule("berlin").await?;
    assert!(paused.next_fires.is_empty(), "{paused:?}");
    let listed = client.schedules().await?;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].next_fires.is_empty());
    let resumed = client.resume_schedule("berlin").await?;
    assert_eq!(resumed.next_fires.len(), 5);

    // An interval counts from when it was stored.
    let mut interval = ticking("interval", "interval", "* * * * *");
    interval.when = Some(v1::schedule::When::Every(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    }));
    let stored = client.create_schedule(interval.clone()).await?;
    let fires: Vec<i64> = stored.next_fires.iter().map(epoch).collect();
    assert_eq!(fires.len(), 5, "{stored:?}");
    assert!(fires.windows(2).all(|w| w[1] - w[0] == 3600), "{fires:?}");

    // Refused, naming what to fix; nothing is kept.
    interval.name = "interval-zoned".into();
    interval.time_zone = "Europe/Berlin".into();
    for (schedule, says) in [
        (interval, "cron schedules only"),
        (
            v1::Schedule {
                time_zone: "Europe/Atlantis".into(),
                ..ticking("atlantis", "never", "0 9 * * *")
            },
            "IANA",
        ),
        (ticking("last-day", "never", "0 0 L * *"), "day-of-month"),
        (ticking("sunday", "never", "0 0 * * 7"), "0 for Sunday"),
    ] {
        let name = schedule.name.clone();
        let err = client.create_schedule(schedule).await.expect_err(&name);
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{name}: {err}");
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
    assert_eq!(client.schedules().await?.len(), 2);

    // The command line: --time-zone, and the next fires it prints.
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args([
            "schedule",
            "create",
            "new-york",
            "examples.chaos.v1.Chaos/Sleep",
            r#"{"millis":1}"#,
            "--cron",
            "30 8 * * mon-fri",
            "--time-zone",
            "America/New_York",
        ])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(printed["time_zone"], "America/New_York", "{printed}");
    assert_eq!(
        printed["next_fires"].as_array().map(Vec::len),
        Some(5),
        "{printed}"
    );
    Ok(())
}
