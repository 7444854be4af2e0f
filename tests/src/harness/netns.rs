//! [`Net`]: network namespaces for a cluster whose members can be partitioned from each other
//! while every member stays reachable from the test process.
//!
//! Member `k` (0-based) of a [`Net`] lives in the namespace `cairn-<pid>-<n>-<k>` (pid of the
//! test process, `n` a counter of this process), whose `eth0` (address `10.X.Y.<k+1>/24`, plus
//! `lo` up) is one end of a veth pair; the other end `cv<pid hex>-<n hex>-<k>` is a port of the
//! bridge `cb<pid hex>-<n hex>` in the root namespace, which has the address `10.X.Y.254/24`.
//! The test process (root namespace) reaches every member through the bridge; members reach
//! each other through the bridge too. A member runs inside its namespace with
//! `ip netns exec <ns> <binary> <flags>` (which execs, so the pid is the server's own).
//!
//! A partition between members `a` and `b`: each one's neighbour (ARP) entry for the other is
//! replaced by a permanent entry with a MAC address nobody has, so their frames to each other
//! are flooded by the bridge and dropped by every receiver: packets are silently lost in both
//! directions (as with a `DROP` firewall rule), TCP connections hang rather than being reset,
//! and the bridge address (the test's clients) still reaches both. This needs no netfilter
//! and no tc action modules (this machine's kernel has neither `iptables` nor `act_gact`).
//! [`Net::heal`] deletes those entries (ARP resolves again).
//!
//! Cleanup: dropping a [`Net`] deletes every namespace (which destroys the veth pairs) and the
//! bridge, on every path, also while a test panics. The first [`Net::new`] of a process also
//! removes namespaces and links left by test processes that no longer run (killed with
//! SIGKILL). The servers must be killed before the [`Net`] is dropped (`Cluster` does).
//!
//! Requires root (CAP_NET_ADMIN) and `ip` from iproute2; [`Net::new`] panics otherwise, with
//! the failing command's output.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// The MAC address a cut neighbour entry points at: locally administered, unused.
const NOWHERE_MAC: &str = "02:ca:11:00:00:01";
/// The host part of the bridge's address.
const BRIDGE_HOST: u8 = 254;

/// The namespaces, veth pairs and bridge of one cluster; see the module doc.
pub struct Net {
    /// `pid hex-n hex`, shared by the link names.
    tag: String,
    /// Namespaces, one per member.
    namespaces: Vec<String>,
    /// `10.X.Y` of every address.
    prefix: String,
    bridge: String,
    /// Pairs `(a, b)`, `a < b`, currently cut.
    cut: BTreeSet<(usize, usize)>,
}

/// Runs `ip` with `args`; `Err` with its output if it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("network namespaces (needs root and iproute2): {e}"))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces `cairn-<pid>-...` and links `cb<hex>-...` / `cv<hex>-...` whose test
/// process is gone.
fn remove_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix("cairn-") else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if rest.split('-').count() == 3 && !pid_alive(pid) {
                eprintln!("cairn-tests: removing leftover network namespace {name}");
                let _ = ip(&["netns", "delete", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: cb1a2b-0: <...": the name ends at ':' or '@'.
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else { continue };
            let Some(rest) = name.strip_prefix("cb").or_else(|| name.strip_prefix("cv")) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| u32::from_str_radix(p, 16).ok()) else { continue };
            if rest.contains('-') && !pid_alive(pid) {
                eprintln!("cairn-tests: removing leftover link {name}");
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// A `10.X.Y` prefix no address of the root namespace uses, derived from the pid and `n`.
fn free_prefix(n: u32) -> String {
    let used = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default();
    let pid = std::process::id();
    for attempt in 0..256u32 {
        let x = 100 + (pid >> 8) % 100;
        let y = (pid.wrapping_mul(7) + n * 13 + attempt) % 250;
        let prefix = format!("10.{x}.{y}");
        if !used.contains(&format!(" {prefix}.")) {
            return prefix;
        }
    }
    panic!("no free 10.X.Y.0/24 prefix for a test network");
}

impl Net {
    /// Creates `hosts` namespaces on one new bridge (see the module doc). Panics if a command
    /// fails (what is already created is removed).
    pub fn new(hosts: usize) -> Net {
        static LEFTOVERS: Once = Once::new();
        LEFTOVERS.call_once(remove_leftovers);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid:x}-{n:x}");
        let prefix = free_prefix(n);
        let mut net =
            Net { tag: tag.clone(), namespaces: Vec::new(), prefix, bridge: format!("cb{tag}"), cut: BTreeSet::new() };
        must(&["link", "add", &net.bridge, "type", "bridge"]);
        let bridge_addr = format!("{}.{BRIDGE_HOST}/24", net.prefix);
        must(&["addr", "add", &bridge_addr, "dev", &net.bridge]);
        must(&["link", "set", &net.bridge, "up"]);
        for k in 0..hosts {
            let ns = format!("cairn-{pid}-{n}-{k}");
            must(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let outer = format!("cv{tag}-{k}");
            let inner = format!("ci{tag}-{k}");
            must(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            must(&["link", "set", &inner, "netns", &ns]);
            must(&["link", "set", &outer, "master", &net.bridge]);
            must(&["link", "set", &outer, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&["-n", &ns, "link", "set", &inner, "name", "eth0"]);
            let addr = format!("{}/24", net.address(k));
            must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// The number of hosts.
    pub fn size(&self) -> usize {
        self.namespaces.len()
    }

    /// The namespace of host `k`.
    pub fn namespace(&self, k: usize) -> &str {
        &self.namespaces[k]
    }

    /// The address of host `k` (`10.X.Y.<k+1>`).
    pub fn address(&self, k: usize) -> String {
        format!("{}.{}", self.prefix, k + 1)
    }

    /// The bridge's address, which the test process's connections come from.
    pub fn bridge_address(&self) -> String {
        format!("{}.{BRIDGE_HOST}", self.prefix)
    }

    /// Cuts the traffic between `a` and `b`, both directions (idempotent).
    pub fn cut(&mut self, a: usize, b: usize) {
        assert_ne!(a, b, "a host cannot be cut from itself");
        let pair = (a.min(b), a.max(b));
        if !self.cut.insert(pair) {
            return;
        }
        for (from, to) in [(a, b), (b, a)] {
            let to_addr = self.address(to);
            must(&[
                "-n",
                &self.namespaces[from],
                "neigh",
                "replace",
                &to_addr,
                "lladdr",
                NOWHERE_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
    }

    /// Cuts `i` from every other host; the test process still reaches it.
    pub fn isolate(&mut self, i: usize) {
        for j in (0..self.size()).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Cuts every pair of hosts that are in different groups (hosts in no group are cut from
    /// every group's hosts).
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let group_of = |h: usize| groups.iter().position(|g| g.contains(&h));
        for a in 0..self.size() {
            for b in a + 1..self.size() {
                if group_of(a).is_none() || group_of(a) != group_of(b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// The pairs currently cut.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }

    /// Restores every cut pair.
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cut) {
            for (from, to) in [(a, b), (b, a)] {
                let to_addr = self.address(to);
                // Deleted: the next packet resolves the real address again.
                let _ = ip(&["-n", &self.namespaces[from], "neigh", "del", &to_addr, "dev", "eth0"]);
            }
        }
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("bridge", &self.bridge)
            .field("prefix", &self.prefix)
            .field("namespaces", &self.namespaces)
            .field("cut", &self.cut)
            .finish()
    }
}

impl Drop for Net {
    /// Deletes every namespace (and so its veth pair) and the bridge; errors are printed, not
    /// raised (this runs while a test panics too).
    fn drop(&mut self) {
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                eprintln!("cairn-tests: {e}");
            }
        }
        for k in 0..self.namespaces.len() {
            // Normally gone with its peer; a failure here is expected.
            let _ = ip(&["link", "delete", &format!("cv{}-{k}", self.tag)]);
        }
        if let Err(e) = ip(&["link", "delete", &self.bridge]) {
            eprintln!("cairn-tests: {e}");
        }
    }
}
