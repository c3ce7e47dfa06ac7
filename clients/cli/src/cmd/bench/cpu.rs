//! Where the time of a run went: the CPU time each process of the system used, per task.

/// Clock ticks a second of `/proc/<pid>/stat` times (Linux's USER_HZ, 100 on every common
/// build).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user and system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it start past its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// The CPU time of some processes, from a start to a stop.
pub(super) struct CpuMeter {
    processes: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    /// Starts measuring the named processes (the benchmark's own process is `bench`).
    pub(super) fn start(processes: &[(&'static str, Option<u32>)]) -> Self {
        let processes = processes
            .iter()
            .filter_map(|(name, pid)| {
                let pid = (*pid)?;
                Some((*name, pid, cpu_seconds(pid)?))
            })
            .collect();
        Self { processes }
    }

    /// Microseconds of CPU time per task each process used since the start (`{name}_cpu_us`),
    /// and their total.
    pub(super) fn per_task(&self, tasks: usize) -> serde_json::Map<String, serde_json::Value> {
        let mut report = serde_json::Map::new();
        let mut total = 0.0;
        for (name, pid, start) in &self.processes {
            let used = cpu_seconds(*pid).unwrap_or(*start) - start;
            let micros = used * 1e6 / tasks.max(1) as f64;
            total += micros;
            report.insert(format!("{name}_cpu_us"), super::round(micros, 1).into());
        }
        report.insert("total_cpu_us".to_owned(), super::round(total, 1).into());
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_process_uses_cpu_time() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("this process's /proc stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid).expect("stat") > before);
    }
}
