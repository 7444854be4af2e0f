//! The seeded randomized test: random writes, reads, compactions, reopens and snapshot
//! round trips against the model, every answer compared field by field.

use rand::Rng;

use crate::harness::{ops_per_seed, seeds, Harness};

fn run(seed: u64, ops: usize) {
    eprintln!("randomized storage test: CAIRN_SEED={seed} ({ops} ops)");
    let mut h = Harness::new(seed);
    for step in 0..ops {
        h.step = step;
        match h.rng.gen_range(0..100) {
            0..=44 => {
                let n = h.rng.gen_range(1..=3);
                let cmds = (0..n).map(|_| h.gen().command()).collect();
                let durable = h.rng.gen_range(0..10) == 0;
                h.apply(cmds, durable);
            }
            45..=71 => {
                let req = h.gen().range();
                h.range(&req);
            }
            72..=75 => {
                let c = cairn_storage::Command::Compact(h.gen().compact());
                h.apply(vec![c], false);
            }
            76..=84 => {
                let limit = if h.rng.gen_bool(0.5) { None } else { Some(h.rng.gen_range(1..=3)) };
                h.compact_steps(limit);
            }
            85..=87 => h.reopen(),
            88 => h.snapshot_round_trip(),
            89..=91 => h.check_all_revisions(),
            92 => h.store().flush().expect("flush"),
            _ => h.check_rows(false),
        }
    }
    // Finish: everything kept must still read right, and a full compaction keeps exactly
    // the rows the model says.
    h.check_all_revisions();
    h.compact_steps(None);
    h.reopen();
    h.check_all_revisions();
    eprintln!("  {:?}", h.stats);
}

#[test]
fn randomized_against_model() {
    let ops = ops_per_seed(300);
    let seeds = seeds(20);
    // Seeds are independent and the runs wait on fsync more than they compute: spread them
    // over a few threads. A failure names its seed.
    let threads = 6;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                run(seed, ops);
            });
        }
    });
}
