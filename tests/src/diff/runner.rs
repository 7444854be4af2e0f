//! [`run_differential`]: one script against a fresh real etcd and a fresh server under test.

use std::fmt::Write;

use crate::harness::{subject_kind, Server, ServerKind, ServerOptions};

use super::script::{check_expectations, indent, run_script, Record, Script};

/// Differences shown in a failure report; the rest are counted.
const MAX_SHOWN_DIFFERENCES: usize = 8;
/// Two renderings with at most this many lines together are shown whole, others as a diff.
const SHOW_WHOLE_LINES: usize = 24;
/// Unchanged lines kept around each change in a line diff.
const DIFF_CONTEXT: usize = 2;

/// Runs `script` against a fresh etcd 3.5.1 (the reference) and a fresh server under test
/// (Cairn, or a second etcd with `CAIRN_DIFF_AGAINST=etcd`), both started here on free ports
/// with default flags, and panics with a readable report unless the two transcripts are
/// equal and every expectation of the script holds.
pub async fn run_differential(name: &str, script: &Script) {
    run_differential_with_args(name, &[], script).await;
}

/// Like [`run_differential`], with the same extra flags given to both servers
/// (e.g. `["--max-txn-ops", "4"]`).
pub async fn run_differential_with_args(name: &str, extra_args: &[&str], script: &Script) {
    let subject_kind = subject_kind();
    // Report a missing binary before starting anything.
    let _ = ServerKind::Etcd.binary();
    let _ = subject_kind.binary();

    let options = ServerOptions::with_args(extra_args.iter().copied());
    let (mut reference, mut subject) =
        tokio::join!(Server::start_with(ServerKind::Etcd, options.clone()), Server::start_with(subject_kind, options));
    reference.set_log_on_failure(false);
    let (ref_client, sub_client) = tokio::join!(reference.client(), subject.client());
    let (ref_records, sub_records) = tokio::join!(run_script(&ref_client, script), run_script(&sub_client, script));

    if std::env::var("CAIRN_DIFF_PRINT").is_ok_and(|v| v == "1") {
        eprintln!("==== scenario `{name}`: transcript of etcd 3.5.1 ====\n{}", render_transcript(&ref_records));
    }

    let broken = check_expectations(script, &ref_records);
    assert!(
        broken.is_empty() && ref_records.len() == script.steps.len(),
        "scenario `{name}`: real etcd does not behave as the scenario expects, so the scenario is wrong:\n{}\n\
         full etcd transcript:\n{}",
        broken.join("\n"),
        render_transcript(&ref_records)
    );

    let subject_label = match subject_kind {
        ServerKind::Etcd => "etcd (2nd)".to_string(),
        ServerKind::Cairn => "cairn".to_string(),
    };
    let diff = diff_transcripts(&ref_records, &sub_records, "etcd", &subject_label);
    let sub_broken = check_expectations(script, &sub_records);
    if diff.is_none() && sub_broken.is_empty() {
        return;
    }
    let mut report = format!("scenario `{name}`: {subject_label} differs from etcd 3.5.1");
    if !subject.is_running() {
        report.push_str(&format!(" ({subject_label} process is no longer running!)"));
    }
    report.push('\n');
    if let Some(d) = diff {
        report.push_str(&d);
    }
    if !sub_broken.is_empty() {
        let _ = writeln!(report, "expectations broken by {subject_label}:\n{}", sub_broken.join("\n"));
    }
    panic!("{report}");
}

/// Renders a transcript, one numbered step after another.
pub fn render_transcript(records: &[Record]) -> String {
    let mut out = String::new();
    for (i, r) in records.iter().enumerate() {
        let _ = writeln!(out, "step {} `{}`\n{}", i + 1, r.label, indent(&r.outcome.to_string(), "    "));
    }
    out
}

/// The differences between two transcripts of the same script, or `None` if they are equal.
pub fn diff_transcripts(left: &[Record], right: &[Record], left_name: &str, right_name: &str) -> Option<String> {
    let steps = left.len().max(right.len());
    let mut differing = Vec::new();
    for i in 0..steps {
        match (left.get(i), right.get(i)) {
            (Some(l), Some(r)) if l.outcome == r.outcome => {}
            (l, r) => differing.push((i, l, r)),
        }
    }
    if differing.is_empty() {
        return None;
    }
    let mut out = format!("{} of {steps} steps differ ({left_name} | {right_name}):\n", differing.len());
    for (i, l, r) in differing.iter().take(MAX_SHOWN_DIFFERENCES) {
        let label = l.or(*r).map(|x| x.label.as_str()).unwrap_or("?");
        let text = |x: &Option<&Record>| match x {
            Some(rec) => rec.outcome.to_string(),
            None => "(not run: the transcript stopped earlier after a client error)".to_string(),
        };
        let (lt, rt) = (text(l), text(r));
        if lt.lines().count() + rt.lines().count() <= SHOW_WHOLE_LINES {
            let _ = writeln!(
                out,
                "  step {} `{label}`:\n    {left_name}:\n{}\n    {right_name}:\n{}",
                i + 1,
                indent(&lt, "      "),
                indent(&rt, "      ")
            );
        } else {
            let _ = writeln!(
                out,
                "  step {} `{label}` (- {left_name}, + {right_name}):\n{}",
                i + 1,
                indent(&line_diff(&lt, &rt), "    ")
            );
        }
    }
    if differing.len() > MAX_SHOWN_DIFFERENCES {
        let _ = writeln!(out, "  ... and {} more differing steps", differing.len() - MAX_SHOWN_DIFFERENCES);
    }
    Some(out)
}

/// A line diff of two texts (longest common subsequence): `- ` lines only in `a`, `+ ` lines
/// only in `b`, and up to [`DIFF_CONTEXT`] unchanged lines around each change.
pub fn line_diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(DIFF_CONTEXT);
        let hi = (k + DIFF_CONTEXT + 1).min(ops.len());
        ops[lo..hi].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut skipped = 0;
    for (k, (c, line)) in ops.iter().enumerate() {
        if *c == ' ' && !near_change(k) {
            skipped += 1;
            continue;
        }
        if skipped > 0 {
            let _ = writeln!(out, "  ... {skipped} equal lines");
            skipped = 0;
        }
        let _ = writeln!(out, "{c} {line}");
    }
    if skipped > 0 {
        let _ = writeln!(out, "  ... {skipped} equal lines");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn line_diff_shows_changes_with_context() {
        let a = "h\n1\n2\n3\n4\n5\n6\n7";
        let b = "h\n1\n2\n3\nX\n5\n6\n7";
        assert_eq!(line_diff(a, b), "  ... 2 equal lines\n  2\n  3\n- 4\n+ X\n  5\n  6\n  ... 1 equal lines\n");
    }
}
