//! CPU accounting from /proc, so that a run says how much CPU the server used and whether
//! something else on the machine (a compiler, another test) was competing with it.

use std::time::Duration;

/// CPU time used so far, from /proc: the machine's busy time, this bench's and (when known)
/// the server's (the sum over its members).
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    machine_busy_ticks: u64,
    bench_ticks: u64,
    server_ticks: Option<u64>,
}

/// CPU used between two samples, in cores (1.0 = one core fully busy for the whole interval).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// By the server under test (all its members).
    pub server_cores: Option<f64>,
    /// By everything except the server under test and this bench (the other server, idle, is
    /// included and normally near zero).
    pub other_cores: Option<f64>,
}

/// Takes a sample; `None` when /proc cannot be read (not Linux). `server_pids` are the
/// members of the server under test (none when the bench did not start it).
pub fn sample(server_pids: &[u32]) -> Option<CpuSample> {
    let server_ticks =
        if server_pids.is_empty() { None } else { server_pids.iter().map(|p| process_ticks(&p.to_string())).sum() };
    Some(CpuSample { machine_busy_ticks: machine_busy_ticks()?, bench_ticks: process_ticks("self")?, server_ticks })
}

/// What was used between `before` and `after`, `elapsed` apart.
pub fn usage(before: Option<CpuSample>, after: Option<CpuSample>, elapsed: Duration) -> CpuUse {
    let (Some(b), Some(a)) = (before, after) else {
        return CpuUse::default();
    };
    let tick = clock_ticks_per_sec();
    let secs = elapsed.as_secs_f64();
    if tick <= 0.0 || secs <= 0.0 {
        return CpuUse::default();
    }
    let cores = |ticks: u64| ticks as f64 / tick / secs;
    let server = match (b.server_ticks, a.server_ticks) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let machine = a.machine_busy_ticks.saturating_sub(b.machine_busy_ticks);
    let bench = a.bench_ticks.saturating_sub(b.bench_ticks);
    CpuUse {
        server_cores: server.map(cores),
        other_cores: server.map(|s| cores(machine.saturating_sub(bench).saturating_sub(s))),
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy ticks of all CPUs since boot: every field of the `cpu` line of /proc/stat except idle
/// and iowait (guest time is already counted in user).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if f.len() < 8 {
        return None;
    }
    Some(f[0] + f[1] + f[2] + f[5] + f[6] + f[7])
}

/// utime + stime of a process (`self` or a pid), in clock ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis start
    // with field 3 (state), so utime (14) and stime (15) are the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        let before = sample(&[std::process::id()]).expect("/proc is readable");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let after = sample(&[std::process::id()]).expect("/proc is readable");
        assert!(after.bench_ticks >= before.bench_ticks);
        assert!(after.machine_busy_ticks >= before.machine_busy_ticks);
        let u = usage(Some(before), Some(after), Duration::from_secs(1));
        assert!(u.server_cores.is_some() && u.other_cores.is_some());
    }
}
