//! Paused queues: the `TASKWIRE_PAUSED` bucket holds, per task type (key its token), a
//! `taskwire.v1.QueuePause` naming the priorities whose tasks workers do not start. A queue
//! that runs at every priority has no key.

use taskwire::v1;

use crate::layout::PRIORITIES;

/// The longest reason a pause keeps.
pub const MAX_REASON: usize = 200;

/// The priorities asked for, as levels of [`PRIORITIES`] (high, normal, low): none asked
/// means all three.
pub fn levels_of(priorities: &[i32]) -> Result<[bool; 3], String> {
    if priorities.is_empty() {
        return Ok([true; 3]);
    }
    let mut levels = [false; 3];
    for &p in priorities {
        let level = match v1::Priority::try_from(p) {
            Ok(v1::Priority::High) => 0,
            Ok(v1::Priority::Normal) => 1,
            Ok(v1::Priority::Low) => 2,
            Ok(v1::Priority::Unspecified) | Err(_) => {
                return Err(format!(
                    "priority {p} is not one of PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW"
                ));
            }
        };
        levels[level] = true;
    }
    Ok(levels)
}

/// The levels a stored pause holds paused.
pub fn paused_levels(pause: &v1::QueuePause) -> [bool; 3] {
    let mut levels = [false; 3];
    for (level, priority) in PRIORITIES.iter().enumerate() {
        levels[level] = pause.priorities.contains(&(*priority as i32));
    }
    levels
}

/// The priorities of `levels`, highest first, as a pause stores them.
pub fn priorities_of(levels: [bool; 3]) -> Vec<i32> {
    PRIORITIES
        .iter()
        .zip(levels)
        .filter(|(_, paused)| *paused)
        .map(|(p, _)| *p as i32)
        .collect()
}

/// A bucket entry's pause: levels paused (none for a deleted key or an unreadable value).
pub fn decode(entry: &async_nats::jetstream::kv::Entry) -> Option<v1::QueuePause> {
    match entry.operation {
        async_nats::jetstream::kv::Operation::Put => {
            prost::Message::decode(entry.value.clone()).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_priority_means_all_and_unspecified_is_refused() {
        assert_eq!(levels_of(&[]), Ok([true; 3]));
        assert_eq!(
            levels_of(&[v1::Priority::Low as i32, v1::Priority::Low as i32]),
            Ok([false, false, true])
        );
        assert!(
            levels_of(&[0])
                .expect_err("unspecified")
                .contains("PRIORITY_HIGH")
        );
        assert!(levels_of(&[9]).is_err());
        let pause = v1::QueuePause {
            priorities: priorities_of([true, false, true]),
            ..Default::default()
        };
        assert_eq!(paused_levels(&pause), [true, false, true]);
        assert_eq!(
            pause.priorities,
            vec![v1::Priority::High as i32, v1::Priority::Low as i32]
        );
    }
}
