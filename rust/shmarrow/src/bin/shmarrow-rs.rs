//! `shmarrow-rs recv`: reads a shmarrow producer's stream and prints what it received, as
//! `shmarrow recv` does (the same one-line JSON summary with `--json`).

use std::process::ExitCode;
use std::time::Duration;

use shmarrow::summary::{json_quote, StreamSummary};
use shmarrow::{Consumer, ConsumerOptions, Mode};

const USAGE: &str = "usage: shmarrow-rs recv [--socket ADDRESS] [--columns a,b] [--json] [--check-zero-copy]
                        [--wait-ms N] [--timeout-ms N (-1: forever)] [--busy-poll-us N]
                        [--max-in-flight N] [--lossy] [--from-oldest]";
const DEFAULT_SOCKET: &str = "/tmp/shmarrow.sock";

struct Recv {
    socket: String,
    json: bool,
    check_zero_copy: bool,
    options: ConsumerOptions,
}

fn number(flag: &str, value: Option<String>) -> Result<i64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value.parse().map_err(|_| format!("{flag} takes a number, not '{value}'"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Recv, String> {
    let mut recv = Recv {
        socket: DEFAULT_SOCKET.to_string(),
        json: false,
        check_zero_copy: false,
        options: ConsumerOptions::default(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => recv.socket = args.next().ok_or("--socket needs a value")?,
            "--columns" => {
                let list = args.next().ok_or("--columns needs a value")?;
                let names: Vec<String> = list.split(',').map(str::to_string).collect();
                if names.iter().any(String::is_empty) {
                    return Err(format!("--columns '{list}' has an empty column name"));
                }
                recv.options.columns = names;
            }
            "--json" => recv.json = true,
            "--check-zero-copy" => recv.check_zero_copy = true,
            "--lossy" => recv.options.lossy = true,
            "--from-oldest" => recv.options.start_at_oldest = true,
            "--wait-ms" => {
                let ms = u64::try_from(number(&arg, args.next())?).map_err(|_| "need --wait-ms >= 0")?;
                recv.options.connect_wait = Duration::from_millis(ms);
            }
            "--timeout-ms" => {
                recv.options.read_timeout = match number(&arg, args.next())? {
                    -1 => None,
                    ms => Some(Duration::from_millis(u64::try_from(ms).map_err(|_| "need --timeout-ms >= -1")?)),
                }
            }
            "--busy-poll-us" => {
                let us = u64::try_from(number(&arg, args.next())?).map_err(|_| "need --busy-poll-us >= 0")?;
                recv.options.busy_poll = Duration::from_micros(us);
            }
            "--max-in-flight" => {
                recv.options.max_in_flight =
                    u32::try_from(number(&arg, args.next())?).map_err(|_| "need --max-in-flight >= 0")?;
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(recv)
}

fn run(recv: Recv) -> Result<(), String> {
    let mut consumer = Consumer::connect(&recv.socket, recv.options).map_err(|e| e.to_string())?;
    let mut summary = StreamSummary::new(consumer.schema());
    let mut in_mapping = true;
    while let Some(batch) = consumer.next_batch().map_err(|e| e.to_string())? {
        in_mapping &= consumer.in_shared_memory(&batch);
        summary.add(&batch);
    }
    summary.set_schema(consumer.schema()); // after a schema change, the stream's last schema
    if recv.check_zero_copy && !in_mapping {
        return Err("a batch has a buffer outside the producer's shared memory (copied)".into());
    }
    let extra = match (consumer.mode(), consumer.memfd()) {
        (Mode::Handover, Some(memfd)) => format!(
            "\"memfd\":{{\"inode\":{},\"bytes\":{},\"seals\":{}}},\"buffers_in_mapping\":{in_mapping}",
            memfd.inode,
            memfd.bytes,
            json_quote(&memfd.seals)
        ),
        (mode, _) => {
            let stats = consumer.stats();
            format!(
                "\"mode\":{},\"dropped\":{},\"schema_changes\":{}",
                json_quote(mode.name()),
                stats.dropped,
                stats.schema_changes
            )
        }
    };
    if recv.json {
        println!("{}", summary.to_json(&extra));
        return Ok(());
    }
    println!("{} batches, {} rows ({})", summary.batches(), summary.rows(), consumer.mode().name());
    let schema = consumer.schema();
    for (field, (_, checksum)) in schema.fields().iter().zip(summary.columns()) {
        let checksum = checksum.map_or("-".to_string(), |c| format!("{c:016x}"));
        println!("  {}: {} checksum {checksum}", field.name(), shmarrow::field_type_name(field));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let parsed = match args.next().as_deref() {
        Some("recv") => parse(args),
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_string()),
    };
    let outcome = parsed.and_then(run);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shmarrow-rs recv: {message}");
            ExitCode::FAILURE
        }
    }
}
