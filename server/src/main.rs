//! The `cairn` binary: an etcd v3 compatible server. See `cairn --help`.

use cairn_server::config::{self, Invocation};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("snapshot") {
        std::process::exit(cairn_server::snapshot_tool::main(&args[1..]));
    }
    let inv = match config::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cairn: {e}");
            eprintln!("Try 'cairn --help' for more information.");
            std::process::exit(2);
        }
    };
    let cfg = match inv {
        Invocation::Version => {
            println!("cairn Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: {}", cairn_server::maintenance::ETCD_VERSION);
            return;
        }
        Invocation::Help => {
            println!("Usage: cairn [flags]\n\nAn etcd v3 compatible key-value server.\n\nFlags (also as ETCD_<FLAG> environment variables):");
            for (f, help) in config::FLAGS {
                println!("  --{f}\n        {help}");
            }
            println!("  --version\n        Print the version and exit.");
            println!("\nSubcommands:\n  cairn snapshot restore|status ...   (see `cairn snapshot`)");
            return;
        }
        Invocation::Run(c) => *c,
    };
    let level = match cfg.log_level.as_str() {
        "panic" | "fatal" => "error",
        l => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(cairn_server::run(cfg, async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGTERM handler");
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }));
    if let Err(e) = result {
        tracing::error!(error = %e, "cairn failed");
        eprintln!("cairn: {e}");
        std::process::exit(1);
    }
}
