//! Results routed to the gateway that waits for them.
//!
//! The results stream republishes each result it stores on
//! `taskwire.stored.results.<partition>.<id>.<token>`, the partition computed by nats-server
//! from the id (its `partition(64,1)` mapping: FNV-1a over the id, modulo 64). Each gateway
//! holds a partition of its own (a key in [`crate::GATEWAYS_BUCKET`]), gives the tasks it
//! submits ids that fall in it, and subscribes to that partition alone: a result reaches the
//! gateway whose caller waits for it and no other, however many gateways run. An id it did not
//! choose (an idempotency key's, or a task submitted elsewhere and waited for here) is waited
//! for on its own subject, which the partition of the id makes exact.

use taskwire::task::Id;

/// How many partitions the stored results are spread over: the most gateways that each get
/// only their own callers' results (more share partitions, and see some results of others).
pub const RESULT_PARTITIONS: u32 = 64;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn fnv1a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u32::from(b)).wrapping_mul(FNV_PRIME))
}

/// The partition nats-server files the result of `id` under.
pub fn partition_of(id: &Id) -> u32 {
    fnv1a(FNV_OFFSET, id.as_str().as_bytes()) % RESULT_PARTITIONS
}

/// A new, time-ordered id whose result falls in `partition` (taken modulo
/// [`RESULT_PARTITIONS`]): an id of [`Id::generate`] whose last three hex digits (random bits
/// of it) are chosen so. Three digits reach every partition from any start (two do not).
pub fn id_in(partition: u32) -> Id {
    let target = partition % RESULT_PARTITIONS;
    let generated = Id::generate();
    let text = generated.as_str();
    let (head, _) = text.split_at(text.len() - 3);
    let prefix = fnv1a(FNV_OFFSET, head.as_bytes());
    for a in HEX {
        let after_a = fnv1a(prefix, &[a]);
        for b in HEX {
            let after_b = fnv1a(after_a, &[b]);
            for c in HEX {
                if fnv1a(after_b, &[c]) % RESULT_PARTITIONS == target {
                    let mut chosen = String::with_capacity(text.len());
                    chosen.push_str(head);
                    chosen.extend([char::from(a), char::from(b), char::from(c)]);
                    if let Ok(id) = Id::parse(&chosen) {
                        return id;
                    }
                }
            }
        }
    }
    // Unreachable (see the test below); an id in another partition is only waited for on a
    // subscription of its own.
    generated
}

const HEX: [u8; 16] = *b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_republish_mapping_spreads_over_as_many_partitions() {
        // The values nats-server computed are in testing/vectors/protocol.json.
        assert!(
            crate::subject::STORED_RESULTS_MAPPING
                .contains(&format!("{{{{partition({RESULT_PARTITIONS},1)}}}}"))
        );
    }

    #[test]
    fn an_id_can_be_made_in_every_partition() {
        for partition in 0..RESULT_PARTITIONS {
            for _ in 0..20 {
                let id = id_in(partition);
                assert_eq!(partition_of(&id), partition);
                assert_eq!(id.as_str().len(), 32);
            }
        }
    }

    #[test]
    fn every_partition_is_reachable_from_every_prefix_through_the_last_three_digits() {
        // The partition (the hash's low six bits) depends only on the low six bits of the hash
        // before the last digits: checking the 64 of them proves `id_in` always finds one.
        for low in 0..RESULT_PARTITIONS {
            let mut reached = [false; RESULT_PARTITIONS as usize];
            for a in HEX {
                for b in HEX {
                    for c in HEX {
                        let hash = fnv1a(fnv1a(fnv1a(low, &[a]), &[b]), &[c]);
                        reached[(hash % RESULT_PARTITIONS) as usize] = true;
                    }
                }
            }
            assert!(reached.iter().all(|r| *r), "from low bits {low}");
        }
    }

    #[test]
    fn ids_made_in_a_partition_keep_their_order_in_time() {
        let first = id_in(3);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = id_in(3);
        assert!(first < second);
    }
}
