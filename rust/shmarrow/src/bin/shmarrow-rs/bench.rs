//! `shmarrow-rs bench-handover`: the Rust consumer of bench/handover_bench's ring hand-over.
//! handover_bench starts it (`--consumer-exec`) in place of its forked C++ consumer; it measures as
//! that consumer does and prints the same JSON line (docs/benchmarks.md).

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use rustix::fs::{flock, FlockOperation};
use rustix::time::{clock_gettime, ClockId};
use shmarrow::{Consumer, ConsumerOptions};

pub struct Bench {
    socket: String,
    warmup: u64,
    busy_poll_us: u64,
    /// Echoed into the JSON line, which bench/run matches to the run it started.
    kind: String,
    transport: String,
    bytes: u64,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Bench, String> {
    let mut bench = Bench {
        socket: String::new(),
        warmup: 1,
        busy_poll_us: 0,
        kind: "handover".into(),
        transport: "ring".into(),
        bytes: 0,
    };
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let unsigned = || {
            value.parse::<u64>().map_err(|_| format!("{arg} takes a number >= 0, not '{value}'"))
        };
        match arg.as_str() {
            "--socket" => bench.socket = value.clone(),
            "--warmup" => bench.warmup = unsigned()?,
            "--busy-poll-us" => bench.busy_poll_us = unsigned()?,
            "--bytes" => bench.bytes = unsigned()?,
            "--kind" => bench.kind = value.clone(),
            "--transport" => bench.transport = value.clone(),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if bench.socket.is_empty() {
        return Err("--socket is required".into());
    }
    Ok(bench)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the producer stamps each batch with.
fn now_ns() -> i64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// Peak resident set of this process (kB), from /proc/self/status; -1 when it cannot be read.
fn vmhwm_kb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(-1)
}

/// Reads until the end; each sample is the moment a readable (fully validated) batch is held
/// minus the producer's publish time in column 0, row 0. Each batch drops at once: released.
fn consume(bench: &Bench) -> Result<Vec<i64>, String> {
    let options = ConsumerOptions {
        connect_timeout: Duration::from_secs(20),
        read_timeout: Some(Duration::from_secs(120)),
        busy_poll: Duration::from_micros(bench.busy_poll_us),
        ..Default::default()
    };
    let mut consumer = Consumer::connect(&bench.socket, options).map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    let mut n = 0u64;
    loop {
        let batch = consumer.next_batch().map_err(|e| e.to_string())?;
        let t1 = now_ns();
        let Some(batch) = batch else { break };
        let stamp = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .filter(|column| !column.is_empty())
            .ok_or("column 0 is not a non-empty int64 column (the producer's publish time)")?
            .value(0);
        if n >= bench.warmup {
            samples.push(t1 - stamp);
        }
        n += 1;
    }
    Ok(samples)
}

/// One JSON line on stdout, whole: the producer shares the pipe and locks it as handover_bench's
/// Emit does (flock on a descriptor of its own, since a lock belongs to an open file description).
fn emit(line: &str) -> Result<(), String> {
    let out = OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/1")
        .map_err(|e| format!("opening stdout: {e}"))?;
    flock(&out, FlockOperation::LockExclusive).map_err(|e| format!("locking stdout: {e}"))?;
    (&out).write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("writing stdout: {e}"))
}

pub fn run(bench: Bench) -> Result<(), String> {
    let samples = consume(&bench)?;
    let samples: Vec<String> = samples.iter().map(i64::to_string).collect();
    emit(&format!(
        "{{\"role\":\"consumer\",\"kind\":{},\"transport\":{},\"bytes\":{},\"busy_poll_us\":{},\"vmhwm_kb\":{},\"samples_ns\":[{}]}}",
        shmarrow::summary::json_quote(&bench.kind),
        shmarrow::summary::json_quote(&bench.transport),
        bench.bytes,
        bench.busy_poll_us,
        vmhwm_kb(),
        samples.join(",")
    ))
}
