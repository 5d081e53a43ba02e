//! Running the C++ producer (`shmarrow send`) for the cross-implementation tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shmarrow::ConsumerOptions;

/// The C++ tool: $SHMARROW_CLI, or build/shmarrow of the repository; None (the test skips,
/// saying so) when it is not built.
pub fn cpp_cli() -> Option<PathBuf> {
    let path = std::env::var_os("SHMARROW_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/shmarrow"));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: the C++ tool {} is not built (set SHMARROW_CLI)", path.display());
        None
    }
}

/// `shmarrow send --mode ring` on a fresh abstract socket: (the process, its address).
pub fn ring_producer(cli: &PathBuf, args: &[&str]) -> (Child, String) {
    let address = format!("@shmarrow-rust-test-{}-{}", std::process::id(), rand_suffix());
    let child = Command::new(cli)
        .args(["send", "--mode", "ring", "--socket", &address, "--schema", "a:int64,s:utf8"])
        .args(["--accept-timeout-ms", "30000"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shmarrow send");
    (child, address)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

pub fn options() -> ConsumerOptions {
    ConsumerOptions {
        connect_timeout: Duration::from_secs(10),
        read_timeout: Some(Duration::from_secs(20)),
        ..ConsumerOptions::default()
    }
}
