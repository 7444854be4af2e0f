//! Scripts: named sequences of requests, run against one server into a transcript.

use etcd_client::{Client, KvClient};

use super::outcome::{Normalizer, Outcome, RpcError};
use super::request::{range_all, Req};

/// Largest response a transcript accepts (etcd-client's default is 4 MiB).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// What a step must get on every server, checked in addition to the comparison. It keeps the
/// scenarios honest: a step meant to show an error must get that error from real etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever the reference answers.
    Any,
    /// Any successful response.
    Ok,
    /// A successful response whose header has this revision.
    Revision(i64),
    /// This gRPC code and exact message.
    Err { code: String, message: String },
}

/// One request of a script.
#[derive(Clone, Debug)]
pub struct Step {
    pub label: String,
    pub req: Req,
    pub expect: Expect,
}

/// A sequence of steps, built with the methods below and run by [`run_script`].
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub steps: Vec<Step>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    fn push(&mut self, label: Option<&str>, req: Req, expect: Expect) -> &mut Self {
        let label = match label {
            Some(l) => format!("{l}: {req}"),
            None => req.to_string(),
        };
        self.steps.push(Step { label, req, expect });
        self
    }

    /// A step whose outcome is only compared.
    pub fn step(&mut self, req: impl Into<Req>) -> &mut Self {
        self.push(None, req.into(), Expect::Any)
    }

    /// A step with a note prepended to its label.
    pub fn note(&mut self, note: &str, req: impl Into<Req>) -> &mut Self {
        self.push(Some(note), req.into(), Expect::Any)
    }

    /// A step that must succeed.
    pub fn ok(&mut self, req: impl Into<Req>) -> &mut Self {
        self.push(None, req.into(), Expect::Ok)
    }

    /// A step that must succeed with this header revision.
    pub fn at_rev(&mut self, revision: i64, req: impl Into<Req>) -> &mut Self {
        self.push(None, req.into(), Expect::Revision(revision))
    }

    /// A step that must fail with this code and message, followed by a [`Script::dump`] that
    /// shows the store unchanged (compared with the other server).
    pub fn err(&mut self, req: impl Into<Req>, code: &str, message: &str) -> &mut Self {
        self.push(None, req.into(), Expect::Err { code: code.to_string(), message: message.to_string() });
        self.dump()
    }

    /// A read of every key: the store's revision and contents at this point.
    pub fn dump(&mut self) -> &mut Self {
        self.push(Some("dump"), range_all().into(), Expect::Ok)
    }
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub label: String,
    pub outcome: Outcome,
}

/// Runs a script with a fresh normaliser. Stops after the first failure that is not a gRPC
/// status (the connection is gone: every further step would only wait for timeouts); the
/// transcript is then shorter than the script.
pub async fn run_script(client: &Client, script: &Script) -> Vec<Record> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut lease = client.lease_client();
    let mut norm = Normalizer::new();
    let mut records = Vec::with_capacity(script.steps.len());
    for step in &script.steps {
        let outcome = match &step.req {
            Req::Lease(l) => match super::lease::execute(&mut lease, &mut norm, l).await {
                Ok(resp) => Outcome::Ok(resp),
                Err(e) => Outcome::Err(RpcError::from_client(&e)),
            },
            req => execute(&mut kv, &mut norm, req).await,
        };
        let fatal = matches!(&outcome, Outcome::Err(e) if !e.is_grpc());
        records.push(Record { label: step.label.clone(), outcome });
        if fatal {
            break;
        }
    }
    records
}

/// Executes one request and normalises what it got.
pub async fn execute(kv: &mut KvClient, norm: &mut Normalizer, req: &Req) -> Outcome {
    let result = match req {
        Req::Range(r) => {
            let (key, options) = r.to_client();
            kv.get(key, Some(options)).await.map(|resp| norm.range(&resp))
        }
        Req::Put(p) => kv.put(p.key.clone(), p.value.clone(), Some(p.options())).await.map(|resp| norm.put(&resp)),
        Req::Delete(d) => kv.delete(d.key.clone(), Some(d.options())).await.map(|resp| norm.delete(&resp)),
        Req::Txn(t) => kv.txn(t.to_client()).await.map(|resp| norm.txn(&resp)),
        Req::Compact(c) => kv.compact(c.revision, Some(c.options())).await.map(|resp| norm.compact(&resp)),
        Req::Lease(_) => panic!("lease requests are executed by `lease::execute` (they need the lease client)"),
    };
    match result {
        Ok(resp) => Outcome::Ok(resp),
        Err(e) => Outcome::Err(RpcError::from_client(&e)),
    }
}

/// Checks the expectations of a script against one transcript; returns one line per broken
/// expectation.
pub fn check_expectations(script: &Script, records: &[Record]) -> Vec<String> {
    let mut broken = Vec::new();
    for (i, (step, rec)) in script.steps.iter().zip(records).enumerate() {
        let ok = match (&step.expect, &rec.outcome) {
            (Expect::Any, _) => true,
            (Expect::Ok, o) => matches!(o, Outcome::Ok(_)),
            (Expect::Revision(rev), Outcome::Ok(r)) => r.header().map(|h| h.revision) == Some(*rev),
            (Expect::Revision(_), Outcome::Err(_)) => false,
            (Expect::Err { code, message }, Outcome::Err(e)) => &e.code == code && &e.message == message,
            (Expect::Err { .. }, Outcome::Ok(_)) => false,
        };
        if !ok {
            broken.push(format!(
                "step {} `{}`: expected {}, got:\n{}",
                i + 1,
                step.label,
                show_expect(&step.expect),
                indent(&rec.outcome.to_string(), "    ")
            ));
        }
    }
    broken
}

fn show_expect(e: &Expect) -> String {
    match e {
        Expect::Any => "anything".to_string(),
        Expect::Ok => "success".to_string(),
        Expect::Revision(r) => format!("success with header revision {r}"),
        Expect::Err { code, message } => format!("error code={code} message={message:?}"),
    }
}

/// Prefixes every line of `text` with `pad`.
pub fn indent(text: &str, pad: &str) -> String {
    text.lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
}
