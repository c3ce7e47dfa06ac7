//! Cron expressions as the broker reads them: six fields (seconds first) of numbers, ranges,
//! steps, lists, `*` and `?`, month and weekday names and weekdays 0 (Sunday) to 6, in a time
//! zone. They are checked with croner before anything is stored, and the next times a schedule
//! fires are worked out the way the broker fires it: at every second whose wall-clock time in
//! the zone matches, so that a time a daylight-saving change skips does not fire that day, and
//! one it repeats fires at both.

use std::str::FromStr as _;

use chrono::{DateTime, LocalResult, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

const FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];
/// The values each field takes, as the broker counts them.
const BOUNDS: [(u32, u32); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How many candidates a look for the next fire times goes through at most.
const LOOK_LIMIT: usize = 1000;

/// A time zone of the IANA database, by its name.
pub(crate) fn time_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!(
            "time_zone {name:?} is not in the IANA time zone database; give a name such as Europe/Berlin, America/New_York or UTC"
        )
    })
}

/// The six fields of a predefined expression.
fn expand(spec: &str) -> Option<&'static str> {
    Some(match spec {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return None,
    })
}

/// What the broker takes in field `index`: `*`, `?`, numbers, names of months (field 4) or
/// weekdays (field 5), as ranges, steps and lists.
fn check_field(index: usize, field: &str) -> Result<(), String> {
    let what = FIELDS[index];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step
            && (step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "the {what} field {field:?}: a step is a number, as in */15"
            ));
        }
        for value in range.split('-') {
            let lower = value.to_ascii_lowercase();
            let known = value == "*"
                || value == "?"
                || (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                || (index == 4 && MONTHS.contains(&lower.as_str()))
                || (index == 5 && DAYS.contains(&lower.as_str()));
            if !known {
                return Err(format!(
                    "the {what} field {field:?} has {value:?}: give numbers, ranges (a-b), steps (/n), lists (a,b), * or ?{}",
                    match index {
                        4 => ", or month names (jan-dec)",
                        5 => ", or weekday names (sun-sat)",
                        _ => "",
                    }
                ));
            }
            if index == 5 && value == "7" {
                return Err(format!(
                    "the day-of-week field {field:?}: weekdays are 0 (Sunday) to 6; write 0 for Sunday"
                ));
            }
            let (low, high) = BOUNDS[index];
            if let Ok(n) = value.parse::<u32>()
                && !(low..=high).contains(&n)
            {
                return Err(format!(
                    "the {what} field {field:?} has {n}: it goes from {low} to {high}"
                ));
            }
        }
    }
    Ok(())
}

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl CronSchedule {
    /// `spec` as the broker takes it: six fields, or a predefined expression (`@daily`, ...).
    pub(crate) fn parse(spec: &str, zone: Tz) -> Result<Self, String> {
        let six = expand(spec).unwrap_or(spec);
        let fields: Vec<&str> = six.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(format!(
                "cron {spec:?} has {} fields; give five (minute hour day-of-month month day-of-week) or six (seconds first)",
                fields.len()
            ));
        }
        for (index, field) in fields.iter().enumerate() {
            check_field(index, field).map_err(|e| format!("cron {spec:?}: {e}"))?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            // `5/15` as the broker reads it: from 5 to the end, every 15.
            .sloppy_ranges(true)
            .build()
            .parse(six)
            .map_err(|e| format!("cron {spec:?}: {e}"))?;
        Ok(Self { cron, zone })
    }

    /// The next `n` times it fires after `after`, as the broker fires it.
    pub(crate) fn next_fires(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut fires: Vec<DateTime<Utc>> = Vec::new();
        let start = after.with_timezone(&self.zone);
        for candidate in self.cron.iter_after(start).take(LOOK_LIMIT) {
            // A time moved past a gap the clock jumped over is not a match of its own.
            if !self.cron.is_time_matching(&candidate).unwrap_or(false) {
                continue;
            }
            let at = match self.zone.from_local_datetime(&candidate.naive_local()) {
                LocalResult::Single(at) => vec![at],
                LocalResult::Ambiguous(first, second) => vec![first, second],
                LocalResult::None => Vec::new(),
            };
            for at in at {
                let at = at.with_timezone(&Utc);
                if at > after && !fires.contains(&at) {
                    fires.push(at);
                }
            }
            if fires.len() >= n {
                break;
            }
        }
        fires.sort();
        fires.truncate(n);
        fires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn fires(spec: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        let zone = time_zone(zone).expect("a zone");
        CronSchedule::parse(spec, zone)
            .expect("a cron")
            .next_fires(utc(after), n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn nine_in_berlin_moves_an_hour_across_the_spring_change() {
        // Berlin goes from UTC+1 to UTC+2 on 28 March 2027.
        assert_eq!(
            fires("0 0 9 * * *", "Europe/Berlin", "2027-03-26T12:00:00Z", 3),
            [
                "2027-03-27T08:00:00+00:00",
                "2027-03-28T07:00:00+00:00",
                "2027-03-29T07:00:00+00:00"
            ]
        );
    }

    #[test]
    fn a_time_the_clock_skips_does_not_fire_that_day_and_one_it_repeats_fires_twice() {
        // 02:30 does not exist in Berlin on 28 March 2027 (02:00 becomes 03:00).
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", "2027-03-27T12:00:00Z", 2),
            ["2027-03-29T00:30:00+00:00", "2027-03-30T00:30:00+00:00"]
        );
        // It happens twice on 31 October 2027 (03:00 becomes 02:00 again).
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", "2027-10-30T12:00:00Z", 3),
            [
                "2027-10-31T00:30:00+00:00",
                "2027-10-31T01:30:00+00:00",
                "2027-11-01T01:30:00+00:00"
            ]
        );
    }

    #[test]
    fn a_start_with_a_step_runs_to_the_end_of_the_field() {
        assert_eq!(
            fires("0 50/5 * * * *", "UTC", "2026-12-07T13:00:00Z", 3),
            [
                "2026-12-07T13:50:00+00:00",
                "2026-12-07T13:55:00+00:00",
                "2026-12-07T14:50:00+00:00"
            ]
        );
    }

    #[test]
    fn utc_predefined_and_weekdays() {
        assert_eq!(
            fires("@daily", "UTC", "2026-12-07T13:00:00Z", 2),
            ["2026-12-08T00:00:00+00:00", "2026-12-09T00:00:00+00:00"]
        );
        // 2026-12-07 is a Monday; names and numbers alike.
        assert_eq!(
            fires(
                "0 0 12 * * fri",
                "America/New_York",
                "2026-12-07T00:00:00Z",
                1
            ),
            ["2026-12-11T17:00:00+00:00"]
        );
        assert_eq!(
            fires(
                "0 0 12 * * 5",
                "America/New_York",
                "2026-12-07T00:00:00Z",
                1
            ),
            ["2026-12-11T17:00:00+00:00"]
        );
    }

    #[test]
    fn what_the_broker_does_not_take_is_refused_naming_the_field() {
        let utc = time_zone("UTC").expect("UTC");
        for (spec, says) in [
            ("0 0 0 L * *", "day-of-month"),
            ("0 0 0 * * 5#2", "day-of-week"),
            ("0 0 0 * * 7", "write 0 for Sunday"),
            (
                "0 61 * * * *",
                "the minute field \"61\" has 61: it goes from 0 to 59",
            ),
            ("0 0 0 0 * *", "day-of-month"),
            ("0 0 0 * *", "give five"),
            ("0 */x * * * *", "step"),
        ] {
            let err = CronSchedule::parse(spec, utc).expect_err(spec);
            assert!(err.contains(says), "{spec}: {err}");
        }
        assert!(
            time_zone("Mars/Olympus")
                .expect_err("no such zone")
                .contains("IANA")
        );
        assert!(time_zone("Local").is_err());
    }
}
