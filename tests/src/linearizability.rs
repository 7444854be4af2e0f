//! A linearizability checker for histories of operations on a key-value store, each key a
//! register.
//!
//! The guarantee checked is etcd's: "every completed operation appears to take effect
//! atomically at some instant between its invocation and its completion, and that order is
//! consistent with the sequential behaviour of the store" (Herlihy & Wing's linearizability;
//! etcd documents it for writes and for linearizable reads, `docs/learning/api_guarantees.md`).
//!
//! # Model
//!
//! Keys are independent registers, so a history is linearizable iff the sub-history of every
//! key is (linearizability is *local*, P-compositionality): [`check`] splits by key and checks
//! each key on its own. The register holds `Option<value>` (absent at first) and supports
//! [`Call::Put`], [`Call::Get`], [`Call::Cas`] (etcd's `txn` "if value == a then put b",
//! which reports whether it succeeded) and [`Call::Delete`] (reports whether the key existed).
//!
//! An operation's end is either [`End::Returned`] (a time and a result) or [`End::Unknown`]:
//! a write that timed out or failed ambiguously may or may not have taken effect, at any
//! instant after its invocation. Such an operation has no deadline and any result; the
//! search may linearize it anywhere after its invocation, or never (which is the same as
//! linearizing it after everything else). A read that did not return has no effect and is
//! dropped.
//!
//! # Search
//!
//! Wing & Gong's depth-first search with Lowe's memoization: the invocations and completions
//! of a key are one time-ordered doubly-linked list. The search walks it from the head; at an
//! invocation it tries to linearize that operation now (the model accepts its result in the
//! current state, and the pair (set of linearized operations, register value) was not
//! explored before), which removes the operation from the list and restarts at the head; at a
//! completion it has found an operation that must already have taken effect but could not,
//! so it undoes the last choice and tries the next candidate. Every operation whose
//! invocation precedes the first remaining completion is a candidate. The history is
//! linearizable once every operation that returned is linearized. The work is bounded
//! ([`Limits::max_steps`] model steps per key): past it the verdict is
//! [`Verdict::Unknown`], never a guess.
//!
//! On failure the report is built from the deepest point the search reached: the longest
//! prefix it could linearize, the value then, the operation whose completion could not be
//! passed, and every candidate with the reason it could not take effect there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Set the key to `value`.
    Put {
        /// The value written (unique per history, for readable reports and a fast search).
        value: String,
    },
    /// A linearizable read of the key.
    Get,
    /// `txn` with the compare `value(key) == expected`, success branch `put(key, new)`.
    Cas {
        /// The value the compare requires.
        expected: String,
        /// The value written if the compare holds.
        new: String,
    },
    /// Delete the key.
    Delete,
}

/// What an operation that returned answered. Must match its [`Call`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A put was acknowledged.
    Put,
    /// The value read, `None` if the key did not exist.
    Get(Option<String>),
    /// Whether the compare held (and the put was done).
    Cas {
        /// The txn's `succeeded`.
        succeeded: bool,
    },
    /// Whether the key existed (`deleted == 1`).
    Delete {
        /// `deleted > 0`.
        existed: bool,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// It returned at `at` with `ret`.
    Returned {
        /// When the response arrived, measured from the history's origin.
        at: Duration,
        /// The result.
        ret: Ret,
    },
    /// It may or may not have taken effect (timeout, lost connection, ambiguous error).
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it (for reports only).
    pub client: usize,
    /// The key it is on.
    pub key: String,
    /// What it asked for.
    pub call: Call,
    /// When it was sent, measured from the history's origin.
    pub invoke: Duration,
    /// How it ended.
    pub end: End,
}

impl Op {
    /// Whether the operation returned (its effect and result are known).
    pub fn returned(&self) -> bool {
        matches!(self.end, End::Returned { .. })
    }

    fn complete(&self) -> Option<Duration> {
        match self.end {
            End::Returned { at, .. } => Some(at),
            End::Unknown => None,
        }
    }

    fn ret(&self) -> Option<&Ret> {
        match &self.end {
            End::Returned { ret, .. } => Some(ret),
            End::Unknown => None,
        }
    }

    fn assert_well_formed(&self) {
        if let End::Returned { at, ret } = &self.end {
            assert!(*at >= self.invoke, "an operation completes after its invocation: {self}");
            let matching = matches!(
                (&self.call, ret),
                (Call::Put { .. }, Ret::Put)
                    | (Call::Get, Ret::Get(_))
                    | (Call::Cas { .. }, Ret::Cas { .. })
                    | (Call::Delete, Ret::Delete { .. })
            );
            assert!(matching, "an operation's result must match its call: {self}");
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn show_value(v: Option<&str>) -> String {
    v.map_or_else(|| "<absent>".to_string(), |v| format!("{v:?}"))
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} ", self.client)?;
        let key = &self.key;
        match (&self.call, self.ret()) {
            (Call::Put { value }, _) => write!(f, "put {key}={value:?}")?,
            (Call::Get, Some(Ret::Get(v))) => write!(f, "get {key} -> {}", show_value(v.as_deref()))?,
            (Call::Get, _) => write!(f, "get {key} -> ?")?,
            (Call::Cas { expected, new }, r) => {
                write!(f, "cas {key} {expected:?}->{new:?}")?;
                if let Some(Ret::Cas { succeeded }) = r {
                    write!(f, " -> {}", if *succeeded { "succeeded" } else { "failed" })?;
                }
            }
            (Call::Delete, r) => {
                write!(f, "delete {key}")?;
                if let Some(Ret::Delete { existed }) = r {
                    write!(f, " -> {}", if *existed { "existed" } else { "absent" })?;
                }
            }
        }
        match self.complete() {
            Some(at) => write!(f, " [{} .. {}]", secs(self.invoke), secs(at)),
            None => write!(f, " [{} .. ?, indeterminate]", secs(self.invoke)),
        }
    }
}

/// Bounds on the work of [`check`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Model steps (attempts to linearize one operation) allowed per key.
    pub max_steps: u64,
}

impl Default for Limits {
    /// Ten million steps per key: a few seconds of search.
    fn default() -> Self {
        Limits { max_steps: 10_000_000 }
    }
}

/// The verdict for one key.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists; why, in terms of the deepest point the search reached.
    NotLinearizable(Box<Counterexample>),
    /// The search used its whole budget without an answer.
    Unknown,
}

/// Why a key's history is not linearizable: the deepest point of the search.
#[derive(Clone, Debug)]
pub struct Counterexample {
    /// How many operations the longest linearizable prefix has.
    pub prefix_len: usize,
    /// Its last operations, in linearization order (at most [`PREFIX_SHOWN`]).
    pub prefix_tail: Vec<Op>,
    /// The register's value after that prefix.
    pub value: Option<String>,
    /// The operation whose completion the search could not pass: it had to take effect by
    /// then and could not.
    pub stuck: Op,
    /// The operations that could have taken effect next (invoked before `stuck` completed),
    /// each with why it could not.
    pub candidates: Vec<(Op, String)>,
    /// Other operations overlapping `stuck` in time (at most [`CONCURRENT_SHOWN`]).
    pub concurrent: Vec<Op>,
}

/// How many operations of the linearized prefix a [`Counterexample`] keeps.
pub const PREFIX_SHOWN: usize = 8;
/// How many concurrent operations a [`Counterexample`] keeps.
pub const CONCURRENT_SHOWN: usize = 12;

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  longest linearizable prefix: {} operations; the value after it: {}",
            self.prefix_len,
            show_value(self.value.as_deref())
        )?;
        if !self.prefix_tail.is_empty() {
            writeln!(f, "  its last operations, in linearization order:")?;
            for op in &self.prefix_tail {
                writeln!(f, "    {op}")?;
            }
        }
        writeln!(
            f,
            "  next, this operation must take effect before it completes, and neither it nor any other candidate can:"
        )?;
        writeln!(f, "    {}", self.stuck)?;
        writeln!(f, "  the candidates (invoked before it completed, not yet linearized):")?;
        for (op, why) in &self.candidates {
            writeln!(f, "    {op}: {why}")?;
        }
        if !self.concurrent.is_empty() {
            writeln!(f, "  other operations overlapping it in time:")?;
            for op in &self.concurrent {
                writeln!(f, "    {op}")?;
            }
        }
        Ok(())
    }
}

/// The result of checking one key.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations checked (reads that did not return are not counted).
    pub ops: usize,
    /// Of those, operations with an unknown outcome.
    pub indeterminate: usize,
    /// Model steps the search took.
    pub steps: u64,
    /// The verdict.
    pub verdict: Verdict,
}

/// The result of [`check`]: one report per key, in key order.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per key.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Whether every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    /// Whether some key is certainly not linearizable.
    pub fn has_violation(&self) -> bool {
        self.keys.iter().any(|k| matches!(k.verdict, Verdict::NotLinearizable(_)))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.keys {
            let verdict = match &k.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable(_) => "NOT LINEARIZABLE",
                Verdict::Unknown => "unknown (search budget exhausted)",
            };
            writeln!(
                f,
                "key {:?}: {verdict} ({} operations, {} indeterminate, {} steps)",
                k.key, k.ops, k.indeterminate, k.steps
            )?;
            if let Verdict::NotLinearizable(c) = &k.verdict {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Checks `history` key by key. Operations may be in any order. Panics if an operation's
/// result does not match its call or it completes before its invocation (a bug of the caller).
pub fn check(history: &[Op], limits: Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        op.assert_well_formed();
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    Report { keys: by_key.into_iter().map(|(key, ops)| check_key(key, &ops, limits)).collect() }
}

/// The register value, as an index into the key's interned values; `None` = absent.
type Value = Option<u32>;

/// An operation of one key with interned values.
struct KeyOp<'h> {
    op: &'h Op,
    call: ModelCall,
    /// `None` for an operation with an unknown outcome.
    ret: Option<ModelRet>,
}

#[derive(Clone, Copy)]
enum ModelCall {
    Put(u32),
    Get,
    Cas { expected: u32, new: u32 },
    Delete,
}

#[derive(Clone, Copy)]
enum ModelRet {
    Done,
    Get(Value),
    Cas(bool),
    Delete(bool),
}

/// The sequential specification: the value after `call` with result `ret` (unknown: any
/// result) in `state`, or `None` if that result is impossible in `state`.
fn step(state: Value, call: ModelCall, ret: Option<ModelRet>) -> Option<Value> {
    match call {
        ModelCall::Put(v) => Some(Some(v)),
        ModelCall::Get => match ret {
            Some(ModelRet::Get(read)) => (read == state).then_some(state),
            // Reads that did not return are dropped before the search.
            _ => unreachable!("only returned reads are searched"),
        },
        ModelCall::Cas { expected, new } => {
            let holds = state == Some(expected);
            match ret {
                Some(ModelRet::Cas(succeeded)) => (succeeded == holds).then_some(if holds { Some(new) } else { state }),
                None => Some(if holds { Some(new) } else { state }),
                Some(_) => unreachable!("results are checked against calls"),
            }
        }
        ModelCall::Delete => match ret {
            Some(ModelRet::Delete(existed)) => (existed == state.is_some()).then_some(None),
            None => Some(None),
            Some(_) => unreachable!("results are checked against calls"),
        },
    }
}

/// One invocation or completion in the time-ordered list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// The sentinel heading the event list.
const NIL: usize = usize::MAX;

/// The event list with removal and exact undo (dancing links): `next`/`prev` have one more
/// slot than there are events, the head sentinel.
struct EventList {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per operation: the index of its completion event, if it returned.
    completion: Vec<Option<usize>>,
}

impl EventList {
    fn head(&self) -> usize {
        self.events.len()
    }

    fn first(&self) -> usize {
        self.next[self.head()]
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Removes the invocation `e` and its operation's completion.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        if let Some(c) = self.completion[self.events[e].op] {
            self.unlink(c);
        }
    }

    /// Undoes [`EventList::lift`] of `e`; lifts are undone in reverse order.
    fn unlift(&mut self, e: usize) {
        if let Some(c) = self.completion[self.events[e].op] {
            self.relink(c);
        }
        self.relink(e);
    }
}

/// The set of linearized operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The deepest point of the search so far.
struct Deepest {
    linearized: Vec<usize>,
    state: Value,
    stuck: usize,
    candidates: Vec<usize>,
}

fn check_key(key: &str, ops: &[&Op], limits: Limits) -> KeyReport {
    // Reads that did not return have no effect.
    let ops: Vec<&Op> = ops.iter().copied().filter(|op| op.call != Call::Get || op.returned()).collect();
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut intern = |v: &str| -> u32 {
        *values.entry(v.to_string()).or_insert_with(|| {
            names.push(v.to_string());
            u32::try_from(names.len() - 1).expect("fewer than 2^32 values per key")
        })
    };
    let key_ops: Vec<KeyOp> = ops
        .iter()
        .map(|&op| {
            let call = match &op.call {
                Call::Put { value } => ModelCall::Put(intern(value)),
                Call::Get => ModelCall::Get,
                Call::Cas { expected, new } => ModelCall::Cas { expected: intern(expected), new: intern(new) },
                Call::Delete => ModelCall::Delete,
            };
            let ret = op.ret().map(|r| match r {
                Ret::Put => ModelRet::Done,
                Ret::Get(v) => ModelRet::Get(v.as_deref().map(&mut intern)),
                Ret::Cas { succeeded } => ModelRet::Cas(*succeeded),
                Ret::Delete { existed } => ModelRet::Delete(*existed),
            });
            KeyOp { op, call, ret }
        })
        .collect();
    let indeterminate = key_ops.iter().filter(|o| o.ret.is_none()).count();
    let mut report =
        KeyReport { key: key.to_string(), ops: key_ops.len(), indeterminate, steps: 0, verdict: Verdict::Linearizable };

    // Invocations before completions at equal times: equal instants count as concurrent.
    let mut timed: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, o) in key_ops.iter().enumerate() {
        timed.push((o.op.invoke, false, i));
        if let Some(at) = o.op.complete() {
            timed.push((at, true, i));
        }
    }
    timed.sort();
    let events: Vec<Event> =
        timed.iter().map(|&(_, is_completion, op)| Event { op, is_call: !is_completion }).collect();
    let m = events.len();
    let mut completion = vec![None; key_ops.len()];
    let mut invocation = vec![0; key_ops.len()];
    for (e, ev) in events.iter().enumerate() {
        if ev.is_call {
            invocation[ev.op] = e;
        } else {
            completion[ev.op] = Some(e);
        }
    }
    // Slot m is the head: next[m] is the first event, prev[0] is the head.
    let next = (0..=m)
        .map(|e| {
            if e == m {
                if m == 0 {
                    NIL
                } else {
                    0
                }
            } else if e + 1 < m {
                e + 1
            } else {
                NIL
            }
        })
        .collect();
    let prev = (0..=m)
        .map(|e| {
            if e == 0 {
                m
            } else if e == m {
                NIL
            } else {
                e - 1
            }
        })
        .collect();
    let mut list = EventList { events, next, prev, completion };

    let mut remaining = key_ops.iter().filter(|o| o.ret.is_some()).count();
    let mut linearized = Bits::new(key_ops.len());
    let mut state: Value = None;
    // The invocations linearized so far, with the value before each.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut explored: HashSet<(Bits, Value)> = HashSet::new();
    let mut deepest: Option<Deepest> = None;
    let mut e = list.first();
    loop {
        if remaining == 0 {
            return report;
        }
        if report.steps >= limits.max_steps {
            report.verdict = Verdict::Unknown;
            return report;
        }
        let event = if e == NIL { None } else { Some(list.events[e]) };
        match event {
            Some(Event { op, is_call: true }) => {
                report.steps += 1;
                let o = &key_ops[op];
                if let Some(after) = step(state, o.call, o.ret) {
                    linearized.set(op);
                    if explored.insert((linearized.clone(), after)) {
                        stack.push((e, state));
                        state = after;
                        list.lift(e);
                        if o.ret.is_some() {
                            remaining -= 1;
                        }
                        e = list.first();
                        continue;
                    }
                    linearized.clear(op);
                }
                e = list.next[e];
            }
            stuck => {
                if let Some(Event { op: stuck, .. }) = stuck {
                    if deepest.as_ref().is_none_or(|d| stack.len() > d.linearized.len()) {
                        let mut candidates = Vec::new();
                        let mut c = list.first();
                        while c != NIL && c != e {
                            if list.events[c].is_call {
                                candidates.push(list.events[c].op);
                            }
                            c = list.next[c];
                        }
                        deepest = Some(Deepest {
                            linearized: stack.iter().map(|&(ce, _)| list.events[ce].op).collect(),
                            state,
                            stuck,
                            candidates,
                        });
                    }
                }
                // Undo the last choice and try the candidate after it.
                let Some((ce, before)) = stack.pop() else {
                    let d = deepest.expect("a search that fails has met a completion it could not pass");
                    report.verdict = Verdict::NotLinearizable(Box::new(explain(&key_ops, &names, &invocation, d)));
                    return report;
                };
                let op = list.events[ce].op;
                list.unlift(ce);
                linearized.clear(op);
                state = before;
                if key_ops[op].ret.is_some() {
                    remaining += 1;
                }
                e = list.next[ce];
            }
        }
    }
}

fn explain(key_ops: &[KeyOp], names: &[String], invocation: &[usize], d: Deepest) -> Counterexample {
    let name = |v: Value| v.map(|i| names[i as usize].clone());
    let written: HashSet<u32> = key_ops
        .iter()
        .filter_map(|o| match o.call {
            ModelCall::Put(v) | ModelCall::Cas { new: v, .. } => Some(v),
            _ => None,
        })
        .collect();
    let now = name(d.state);
    let now_shown = show_value(now.as_deref());
    let mut candidates: Vec<usize> = d.candidates;
    candidates.sort_by_key(|&i| invocation[i]);
    let candidates = candidates
        .into_iter()
        .map(|i| {
            let o = &key_ops[i];
            let why = match (o.call, o.ret) {
                (ModelCall::Get, Some(ModelRet::Get(read))) if read != d.state => {
                    let never = match read {
                        Some(v) if !written.contains(&v) => " (no operation on this key ever wrote it)",
                        _ => "",
                    };
                    format!("it read {}{never} but the value is {now_shown}", show_value(name(read).as_deref()))
                }
                (ModelCall::Cas { expected, .. }, Some(ModelRet::Cas(true))) if d.state != Some(expected) => {
                    format!(
                        "it succeeded, which needs the value {:?}, but the value is {now_shown}",
                        names[expected as usize]
                    )
                }
                (ModelCall::Cas { .. }, Some(ModelRet::Cas(false))) => {
                    format!("it failed, which needs a value other than {now_shown}")
                }
                (ModelCall::Delete, Some(ModelRet::Delete(existed))) => format!(
                    "it found the key {}, but the value is {now_shown}",
                    if existed { "present" } else { "absent" }
                ),
                _ => "it may take effect here, but no continuation from there works (all explored)".to_string(),
            };
            (o.op.clone(), why)
        })
        .collect();
    let stuck = key_ops[d.stuck].op;
    let stuck_end = stuck.complete().expect("only a returned operation can be stuck");
    let mut concurrent: Vec<&Op> = key_ops
        .iter()
        .map(|o| o.op)
        .filter(|o| !std::ptr::eq(*o, stuck) && o.invoke <= stuck_end && o.complete().is_none_or(|c| c >= stuck.invoke))
        .collect();
    concurrent.sort_by_key(|o| o.invoke);
    concurrent.truncate(CONCURRENT_SHOWN);
    let skip = d.linearized.len().saturating_sub(PREFIX_SHOWN);
    Counterexample {
        prefix_len: d.linearized.len(),
        prefix_tail: d.linearized[skip..].iter().map(|&i| key_ops[i].op.clone()).collect(),
        value: now,
        stuck: stuck.clone(),
        candidates,
        concurrent: concurrent.into_iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(client: usize, call: Call, invoke: u64, end: Option<(u64, Ret)>) -> Op {
        Op {
            client,
            key: "k".to_string(),
            call,
            invoke: ms(invoke),
            end: end.map_or(End::Unknown, |(at, ret)| End::Returned { at: ms(at), ret }),
        }
    }

    fn put(c: usize, v: &str, t0: u64, t1: u64) -> Op {
        op(c, Call::Put { value: v.to_string() }, t0, Some((t1, Ret::Put)))
    }
    fn put_unknown(c: usize, v: &str, t0: u64) -> Op {
        op(c, Call::Put { value: v.to_string() }, t0, None)
    }
    fn get(c: usize, v: Option<&str>, t0: u64, t1: u64) -> Op {
        op(c, Call::Get, t0, Some((t1, Ret::Get(v.map(str::to_string)))))
    }
    fn cas(c: usize, a: &str, b: &str, ok: bool, t0: u64, t1: u64) -> Op {
        op(c, Call::Cas { expected: a.to_string(), new: b.to_string() }, t0, Some((t1, Ret::Cas { succeeded: ok })))
    }
    fn cas_unknown(c: usize, a: &str, b: &str, t0: u64) -> Op {
        op(c, Call::Cas { expected: a.to_string(), new: b.to_string() }, t0, None)
    }
    fn del(c: usize, existed: bool, t0: u64, t1: u64) -> Op {
        op(c, Call::Delete, t0, Some((t1, Ret::Delete { existed })))
    }

    fn verdict(h: &[Op]) -> Report {
        check(h, Limits::default())
    }

    fn assert_ok(h: &[Op]) {
        let r = verdict(h);
        assert!(r.is_linearizable(), "expected linearizable:\n{r}");
    }

    fn assert_violation(h: &[Op]) -> String {
        let r = verdict(h);
        assert!(r.has_violation(), "expected a violation:\n{r}");
        r.to_string()
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_ok(&[]);
        assert_ok(&[get(0, None, 0, 1)]);
        assert_ok(&[put(0, "a", 0, 1), get(0, Some("a"), 2, 3), cas(0, "a", "b", true, 4, 5), get(1, Some("b"), 6, 7)]);
        assert_ok(&[put(0, "a", 0, 1), del(0, true, 2, 3), get(1, None, 4, 5), del(1, false, 6, 7)]);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping puts; reads after both see one of them, consistently.
        assert_ok(&[put(0, "a", 0, 10), put(1, "b", 1, 9), get(2, Some("a"), 11, 12), get(2, Some("a"), 13, 14)]);
        assert_ok(&[put(0, "a", 0, 10), put(1, "b", 1, 9), get(2, Some("b"), 11, 12)]);
        // A read overlapping a put may see the old or the new value.
        assert_ok(&[put(0, "a", 0, 1), put(1, "b", 2, 10), get(2, Some("a"), 3, 4), get(2, Some("b"), 5, 6)]);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let text = assert_violation(&[put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, Some("a"), 4, 5)]);
        assert!(text.contains("get k -> \"a\""), "{text}");
        assert!(text.contains("but the value is \"b\""), "{text}");
    }

    #[test]
    fn flip_flopping_reads_are_a_violation() {
        // During a concurrent put, once a read saw the new value a later read may not see the old one.
        assert_violation(&[put(0, "a", 0, 1), put(1, "b", 2, 20), get(2, Some("b"), 3, 4), get(2, Some("a"), 5, 6)]);
    }

    #[test]
    fn lost_write_is_a_violation() {
        assert_violation(&[put(0, "a", 0, 1), put(1, "b", 2, 3), get(2, Some("b"), 4, 5), get(2, None, 6, 7)]);
        assert_violation(&[put(0, "a", 0, 1), get(1, None, 2, 3)]);
    }

    #[test]
    fn two_cas_succeeding_from_the_same_value_is_a_violation() {
        let text = assert_violation(&[put(0, "a", 0, 1), cas(1, "a", "b", true, 2, 10), cas(2, "a", "c", true, 3, 11)]);
        assert!(text.contains("it succeeded, which needs the value \"a\""), "{text}");
        // Concurrent CASes: one may fail.
        assert_ok(&[put(0, "a", 0, 1), cas(1, "a", "b", true, 2, 10), cas(2, "a", "c", false, 3, 11)]);
    }

    #[test]
    fn a_failed_cas_needs_a_different_value() {
        assert_violation(&[put(0, "a", 0, 1), cas(1, "a", "b", false, 2, 3)]);
        assert_ok(&[cas(1, "a", "b", false, 0, 1)]);
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let text = assert_violation(&[put(0, "a", 0, 1), get(1, Some("zz"), 2, 3)]);
        assert!(text.contains("no operation on this key ever wrote it"), "{text}");
    }

    #[test]
    fn an_indeterminate_write_may_have_taken_effect() {
        // Seen long after the timeout: still allowed (it may take effect at any time).
        assert_ok(&[put(0, "a", 0, 1), put_unknown(1, "b", 2), get(2, Some("a"), 50, 51), get(2, Some("b"), 100, 101)]);
        // An indeterminate CAS that took effect.
        assert_ok(&[put(0, "a", 0, 1), cas_unknown(1, "a", "b", 2), get(2, Some("b"), 5, 6)]);
    }

    #[test]
    fn an_indeterminate_write_may_not_have_taken_effect() {
        assert_ok(&[put(0, "a", 0, 1), put_unknown(1, "b", 2), get(2, Some("a"), 5, 6), get(2, Some("a"), 7, 8)]);
        assert_ok(&[put(0, "a", 0, 1), cas_unknown(1, "a", "b", 2), cas(2, "a", "c", true, 5, 6)]);
    }

    #[test]
    fn an_indeterminate_write_takes_effect_at_most_once_and_not_before_its_invocation() {
        // Once overwritten, "b" cannot come back.
        assert_violation(&[
            put_unknown(1, "b", 0),
            get(2, Some("b"), 5, 6),
            put(0, "c", 7, 8),
            get(2, Some("b"), 9, 10),
        ]);
        // Read before the write was invoked.
        assert_violation(&[get(2, Some("b"), 0, 1), put_unknown(1, "b", 2)]);
        // An indeterminate CAS whose compare could never hold cannot have written.
        assert_violation(&[put(0, "a", 0, 1), cas_unknown(1, "x", "b", 2), get(2, Some("b"), 5, 6)]);
    }

    #[test]
    fn reads_that_did_not_return_are_ignored() {
        assert_ok(&[put(0, "a", 0, 1), op(1, Call::Get, 2, None), get(2, Some("a"), 3, 4)]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![put(0, "a", 0, 1), get(1, Some("a"), 2, 3)];
        let mut other = vec![put(0, "x", 0, 1), get(1, None, 2, 3)];
        for o in &mut other {
            o.key = "other".to_string();
        }
        h.extend(other);
        let r = verdict(&h);
        assert_eq!(r.keys.len(), 2);
        assert!(matches!(r.keys[0].verdict, Verdict::Linearizable), "{r}");
        assert!(matches!(r.keys[1].verdict, Verdict::NotLinearizable(_)), "{r}");
    }

    #[test]
    fn an_exhausted_budget_is_unknown_not_a_violation() {
        // Many concurrent indeterminate puts and a final read no one wrote: the search must
        // try every subset before it can say no.
        let mut h: Vec<Op> = (0..40).map(|i| put_unknown(i, &format!("v{i}"), i as u64)).collect();
        h.push(get(99, Some("nobody"), 100, 101));
        let r = check(&h, Limits { max_steps: 10_000 });
        assert!(matches!(r.keys[0].verdict, Verdict::Unknown), "{r}");
        assert!(!r.is_linearizable() && !r.has_violation());
        assert!(r.to_string().contains("unknown (search budget exhausted)"));
    }

    /// An independent, exhaustive checker for tiny histories: every order of the operations
    /// that respects real time, each indeterminate operation in it or not.
    fn brute_force(h: &[Op]) -> bool {
        fn go(h: &[Op], done: &mut Vec<bool>, value: Option<String>) -> bool {
            let pending: Vec<usize> = (0..h.len()).filter(|&i| !done[i]).collect();
            if pending.iter().all(|&i| !h[i].returned()) {
                return true;
            }
            for &i in &pending {
                // `i` may go next only if no pending operation completed before it was invoked.
                if pending.iter().any(|&j| h[j].complete().is_some_and(|c| c < h[i].invoke)) {
                    continue;
                }
                let after = match (&h[i].call, h[i].ret()) {
                    (Call::Put { value: v }, _) => Some(Some(v.clone())),
                    (Call::Get, Some(Ret::Get(r))) => (*r == value).then(|| value.clone()),
                    (Call::Get, _) => Some(value.clone()),
                    (Call::Cas { expected, new }, r) => {
                        let holds = value.as_ref() == Some(expected);
                        let next = if holds { Some(new.clone()) } else { value.clone() };
                        match r {
                            Some(Ret::Cas { succeeded }) => (*succeeded == holds).then_some(next),
                            _ => Some(next),
                        }
                    }
                    (Call::Delete, r) => match r {
                        Some(Ret::Delete { existed }) => (*existed == value.is_some()).then_some(None),
                        _ => Some(None),
                    },
                };
                if let Some(after) = after {
                    done[i] = true;
                    let ok = go(h, done, after);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        // A tiny deterministic generator (splitmix64), seed printed on failure.
        let mut seed: u64 = 0x5eed_1234;
        let mut next = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (mut linearizable, mut not) = (0, 0);
        for round in 0..3000 {
            let n = 1 + (next() % 6) as usize;
            let vals = ["a", "b", "c"];
            let h: Vec<Op> = (0..n)
                .map(|c| {
                    let t0 = next() % 20;
                    let t1 = t0 + next() % 10;
                    let v = |x: u64| vals[(x % 3) as usize].to_string();
                    let unknown = next() % 5 == 0;
                    let (call, ret) = match next() % 4 {
                        0 => (Call::Put { value: v(next()) }, Ret::Put),
                        1 => (Call::Get, Ret::Get((next() % 4 != 0).then(|| v(next())))),
                        2 => {
                            (Call::Cas { expected: v(next()), new: v(next()) }, Ret::Cas { succeeded: next() % 2 == 0 })
                        }
                        _ => (Call::Delete, Ret::Delete { existed: next() % 2 == 0 }),
                    };
                    let end = if unknown { End::Unknown } else { End::Returned { at: ms(t1), ret } };
                    Op { client: c, key: "k".to_string(), call, invoke: ms(t0), end }
                })
                .collect();
            let want = brute_force(&h);
            let r = verdict(&h);
            assert_eq!(r.is_linearizable(), want, "round {round}: checker disagrees with brute force on {h:#?}\n{r}");
            assert!(r.is_linearizable() != r.has_violation(), "round {round}: no unknown verdicts on tiny histories");
            if want {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        assert!(linearizable > 300 && not > 300, "both verdicts exercised: {linearizable} / {not}");
    }

    #[test]
    fn a_long_concurrent_linearizable_history_is_checked_quickly() {
        // 5 clients, 2000 operations, overlapping windows; generated from a sequential run so
        // that it is linearizable by construction: each op takes effect at 10*i + 5.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        for i in 0..2000u64 {
            let c = (i % 5) as usize;
            let (t0, t1) = (10 * i, 10 * i + 25);
            let o = match i % 4 {
                0 | 2 => {
                    let v = format!("v{i}");
                    value = Some(v.clone());
                    put(c, &v, t0, t1)
                }
                1 => get(c, value.as_deref(), t0, t1),
                _ => {
                    let expected = value.clone().unwrap_or_default();
                    let v = format!("w{i}");
                    value = Some(v.clone());
                    cas(c, &expected, &v, true, t0, t1)
                }
            };
            h.push(o);
        }
        let r = verdict(&h);
        assert!(r.is_linearizable(), "{r}");
        assert!(r.keys[0].steps < 100_000, "{r}");
    }
}
