//! Free TCP ports on 127.0.0.1.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// How many times [`free_port`] asks the kernel before giving up.
const MAX_ATTEMPTS: usize = 1000;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago: bind port 0, read the port the kernel
/// chose, drop the listener. A port is never returned twice by one process, so tests running
/// in parallel threads do not collide with each other (they can still race with other
/// processes of the machine, as any free-port scheme can).
pub fn free_port() -> u16 {
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
