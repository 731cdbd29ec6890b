//! Writes `N` objects to a SQLite store and prints `ack <key>` after each acknowledged write.
//! The kill -9 durability test kills it mid-stream and checks every acknowledged key survived.

use std::io::Write;

use meshwork_orchestrator_store::{SqliteStore, SqliteSync, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u32>().ok()))
    else {
        eprintln!("usage: mw-store-writer DB N");
        return std::process::ExitCode::from(64);
    };
    let store = match SqliteStore::open(std::path::Path::new(path), SqliteSync::Full) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mw-store-writer: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    for i in 0..n {
        let key = format!("/registry/configmaps/default/cm-{i:06}");
        if let Err(e) = store
            .create(&key, format!("{{\"i\":{i}}}").into_bytes())
            .await
        {
            eprintln!("mw-store-writer: {e}");
            return std::process::ExitCode::FAILURE;
        }
        let _ = writeln!(out, "ack {key}");
        let _ = out.flush();
    }
    std::process::ExitCode::SUCCESS
}
