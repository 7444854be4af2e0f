//! Free TCP ports on 127.0.0.1.
//!
//! Ports are taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a
//! port from that range that was free when the test looked can be taken by any outgoing
//! connection (a client of another test, a member dialling a peer) before the server the
//! port was meant for binds it. Below the range only listeners compete.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// How many candidate ports [`free_port`] tries before giving up.
const MAX_ATTEMPTS: u32 = 5000;
/// The lowest port handed out.
const LOWEST: u32 = 20_000;
/// Below this many ports under the ephemeral range, ports are asked of the kernel (port 0).
const MIN_RANGE: u32 = 2_000;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range (see the
/// module doc), starting from a place derived from the process id so that two test processes
/// rarely probe the same ports. A port is never returned twice by one process, so tests
/// running in parallel threads do not collide with each other.
pub fn free_port() -> u16 {
    let low = ephemeral_low();
    if low < LOWEST + MIN_RANGE {
        return kernel_port();
    }
    let span = low - LOWEST;
    let start = std::process::id().wrapping_mul(7919) % span;
    let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..MAX_ATTEMPTS.min(span) {
        let Ok(port) = u16::try_from(LOWEST + (start + i) % span) else { continue };
        if ports.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.insert(port);
            return port;
        }
    }
    drop(ports);
    kernel_port()
}

/// A port the kernel chose (bind port 0), never returned twice by this process.
fn kernel_port() -> u16 {
    for _ in 0..MAX_ATTEMPTS {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local address of a bound listener").port();
        drop(listener);
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert(port) {
            return port;
        }
    }
    panic!("no new free port found on 127.0.0.1 after {MAX_ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = free_port();
            assert!(seen.insert(p), "port {p} handed out twice");
            if low >= LOWEST + MIN_RANGE {
                assert!((LOWEST..low).contains(&u32::from(p)), "port {p} outside {LOWEST}..{low}");
            }
            TcpListener::bind(("127.0.0.1", p)).expect("a handed-out port is bindable");
        }
    }
}
