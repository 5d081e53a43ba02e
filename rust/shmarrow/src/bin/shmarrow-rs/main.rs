//! `shmarrow-rs recv`: reads a shmarrow producer's stream and prints what it received, as
//! `shmarrow recv` does (the same one-line JSON summary with `--json`). `shmarrow-rs send`:
//! publishes generated batches in ring or sealed mode, as `shmarrow send --mode` does.
//! `shmarrow-rs bench-handover`: the Rust consumer of bench/run's ring hand-over rows.

mod bench;
mod generate;

use std::process::ExitCode;
use std::time::Duration;

use shmarrow::summary::{json_quote, StreamSummary};
use shmarrow::{Consumer, ConsumerOptions, Mode, Producer, ProducerOptions};

const USAGE: &str = "usage: shmarrow-rs recv [--socket ADDRESS] [--columns a,b] [--request TEXT] [--json] [--check-zero-copy]
                        [--expect-schema name:type,... [--schema-subset]] [--delay-ms N]
                        [--connect-timeout-ms N] [--read-timeout-ms N (-1: forever)] [--busy-poll-us N]
                        [--max-in-flight N] [--lossy] [--from-oldest]
       shmarrow-rs send [--socket ADDRESS] [--mode sealed|ring] [--ring-size BYTES] [--rows N] [--batches N]
                        [--schema name:type,...] [--seed N] [--null-fraction F]
                        [--wait-consumers N] [--max-in-flight N] [--accept-timeout-ms N] [--json]
       shmarrow-rs bench-handover --socket ADDRESS [--warmup N] [--busy-poll-us N]
                        [--kind NAME] [--transport NAME] [--bytes N]   (started by bench/handover_bench)";
const DEFAULT_SOCKET: &str = "/tmp/shmarrow.sock";

struct Recv {
    socket: String,
    delay: Duration,
    request: Option<String>,
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
        delay: Duration::ZERO,
        request: None,
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
            "--request" => recv.request = Some(args.next().ok_or("--request needs a value")?),
            "--expect-schema" => {
                let spec = args.next().ok_or("--expect-schema needs a value")?;
                let schema =
                    generate::parse_schema(&spec).map_err(|e| format!("--expect-schema: {e}"))?;
                recv.options.expect_schema = Some(schema);
            }
            "--schema-subset" => recv.options.schema_subset = true,
            "--delay-ms" => {
                let ms = u64::try_from(number(&arg, args.next())?)
                    .map_err(|_| "need --delay-ms >= 0")?;
                recv.delay = Duration::from_millis(ms);
            }
            "--check-zero-copy" => recv.check_zero_copy = true,
            "--lossy" => recv.options.lossy = true,
            "--from-oldest" => recv.options.start_at_oldest = true,
            "--connect-timeout-ms" => {
                let ms = u64::try_from(number(&arg, args.next())?)
                    .map_err(|_| "need --connect-timeout-ms >= 0")?;
                recv.options.connect_timeout = Duration::from_millis(ms);
            }
            "--read-timeout-ms" => {
                recv.options.read_timeout = match number(&arg, args.next())? {
                    -1 => None,
                    ms => Some(Duration::from_millis(
                        u64::try_from(ms).map_err(|_| "need --read-timeout-ms >= -1")?,
                    )),
                }
            }
            "--busy-poll-us" => {
                let us = u64::try_from(number(&arg, args.next())?)
                    .map_err(|_| "need --busy-poll-us >= 0")?;
                recv.options.busy_poll = Duration::from_micros(us);
            }
            "--max-in-flight" => {
                recv.options.max_in_flight = u32::try_from(number(&arg, args.next())?)
                    .map_err(|_| "need --max-in-flight >= 0")?;
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if recv.options.schema_subset && recv.options.expect_schema.is_none() {
        return Err("--schema-subset needs --expect-schema".into());
    }
    if recv.request.is_some() {
        // Only the answer is read: hold the stream's batches as little as possible, so that this
        // consumer does not hold the producer back while it waits.
        recv.options.lossy = true;
        if recv.options.max_in_flight == 0 {
            recv.options.max_in_flight = 1;
        }
    }
    Ok(recv)
}

struct Send {
    socket: String,
    rows: usize,
    batches: u64,
    schema: String,
    seed: u64,
    null_fraction: f64,
    wait_consumers: usize,
    accept_timeout: Option<Duration>,
    json: bool,
    ring: bool,
    ring_size: usize,
    options: ProducerOptions,
}

fn parse_send(mut args: impl Iterator<Item = String>) -> Result<Send, String> {
    let mut send = Send {
        socket: DEFAULT_SOCKET.to_string(),
        rows: 100,
        batches: 1,
        schema: "rand:int32".to_string(),
        seed: 42,
        null_fraction: 0.0,
        wait_consumers: 1,
        accept_timeout: None,
        json: false,
        ring: false,
        ring_size: 64 << 20,
        options: ProducerOptions::default(),
    };
    let unsigned = |flag: &str, value: Option<String>| {
        u64::try_from(number(flag, value)?).map_err(|_| format!("need {flag} >= 0"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => send.socket = args.next().ok_or("--socket needs a value")?,
            "--mode" => match args.next().as_deref() {
                Some("sealed") => send.ring = false,
                Some("ring") => send.ring = true,
                _ => return Err("--mode takes ring or sealed".into()),
            },
            "--ring-size" => send.ring_size = unsigned(&arg, args.next())? as usize,
            "--rows" => send.rows = unsigned(&arg, args.next())? as usize,
            "--batches" => send.batches = unsigned(&arg, args.next())?,
            "--schema" => send.schema = args.next().ok_or("--schema needs a value")?,
            "--seed" => send.seed = unsigned(&arg, args.next())?,
            "--null-fraction" => {
                let value = args.next().ok_or("--null-fraction needs a value")?;
                send.null_fraction =
                    value.parse().ok().filter(|f| (0.0..=1.0).contains(f)).ok_or(format!(
                        "--null-fraction takes a number in [0, 1], not '{value}'"
                    ))?;
            }
            "--wait-consumers" => send.wait_consumers = unsigned(&arg, args.next())? as usize,
            "--max-in-flight" => {
                send.options.max_in_flight = u32::try_from(unsigned(&arg, args.next())?)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("need --max-in-flight >= 1")?;
            }
            "--accept-timeout-ms" => {
                send.accept_timeout = match number(&arg, args.next())? {
                    -1 => None,
                    ms => Some(Duration::from_millis(
                        u64::try_from(ms).map_err(|_| "need --accept-timeout-ms >= -1")?,
                    )),
                }
            }
            "--json" => send.json = true,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(send)
}

/// How long consumers have to release the last batches before the producer gives up on them.
const LINGER: Duration = Duration::from_secs(10);

fn run_send(mut send: Send) -> Result<(), String> {
    let schema = generate::parse_schema(&send.schema).map_err(|e| format!("--schema: {e}"))?;
    let mode = if send.ring { "ring" } else { "sealed" };
    send.options.ring_size = send.ring.then_some(send.ring_size);
    let mut producer =
        Producer::bind(&send.socket, schema.clone(), send.options).map_err(|e| e.to_string())?;
    eprintln!("shmarrow-rs send: {mode} producer listening on {}", send.socket);
    producer
        .wait_for_consumers(send.wait_consumers, send.accept_timeout)
        .map_err(|e| e.to_string())?;
    let mut generator = generate::Generator::new(schema.clone(), send.seed, send.null_fraction);
    let mut summary = StreamSummary::new(schema);
    for i in 0..send.batches {
        let batch = generator.next_batch(send.rows);
        summary.add(&batch);
        producer
            .publish(&batch)
            .map_err(|e| format!("publishing batch {} of {}: {e}", i + 1, send.batches))?;
    }
    producer.finish(Some(LINGER)).map_err(|e| e.to_string())?;
    let stats = producer.stats();
    if send.json {
        println!(
            "{}",
            summary.to_json(&format!(
                "\"mode\":\"{mode}\",\"producer\":{{\"published\":{},\"bytes_copied\":{},\"consumers_total\":{}}},\"socket\":{}",
                stats.published,
                stats.bytes_copied,
                stats.consumers_total,
                json_quote(&send.socket)
            ))
        );
    } else {
        eprintln!(
            "shmarrow-rs send: {} batches, {} rows to {} consumers ({} bytes copied into shared memory)",
            stats.published,
            summary.rows(),
            stats.consumers_total,
            stats.bytes_copied
        );
    }
    Ok(())
}

fn run(recv: Recv) -> Result<(), String> {
    let mut consumer = Consumer::connect(&recv.socket, recv.options).map_err(|e| e.to_string())?;
    let mut in_mapping = true;
    let summary = match &recv.request {
        // The answer to a request, read through the consumer that sent it.
        Some(request) => {
            let mut response = consumer.request(request.as_bytes()).map_err(|e| e.to_string())?;
            let mut summary = StreamSummary::new(response.schema().map_err(|e| e.to_string())?);
            while let Some(batch) = response.next_batch().map_err(|e| e.to_string())? {
                in_mapping &= response.in_shared_memory(&batch);
                summary.add(&batch);
            }
            summary
        }
        None => {
            let mut summary = StreamSummary::new(consumer.schema());
            while let Some(batch) = consumer.next_batch().map_err(|e| e.to_string())? {
                in_mapping &= consumer.in_shared_memory(&batch);
                summary.add(&batch);
                // A deliberately slow consumer holds each batch while it "works".
                std::thread::sleep(recv.delay);
            }
            summary.set_schema(consumer.schema()); // after a schema change, the stream's last schema
            summary
        }
    };
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
            let request = recv.request.as_deref().map(|r| format!(",\"request\":{}", json_quote(r)));
            format!(
                "\"mode\":{},\"dropped\":{},\"schema_changes\":{}{}",
                json_quote(mode.name()),
                stats.dropped,
                stats.schema_changes,
                request.unwrap_or_default()
            )
        }
    };
    if recv.json {
        println!("{}", summary.to_json(&extra));
        return Ok(());
    }
    println!("{} batches, {} rows ({})", summary.batches(), summary.rows(), consumer.mode().name());
    for (field, (_, checksum)) in summary.schema().fields().iter().zip(summary.columns()) {
        let checksum = checksum.map_or("-".to_string(), |c| format!("{c:016x}"));
        println!("  {}: {} checksum {checksum}", field.name(), shmarrow::field_type_name(field));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let outcome = match command.as_str() {
        "recv" => parse(args).and_then(run),
        "send" => parse_send(args).and_then(run_send),
        "bench-handover" => bench::parse(args).and_then(bench::run),
        "--help" | "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line, whatever a library's message holds.
            let message: Vec<&str> = message.split_whitespace().collect();
            eprintln!("shmarrow-rs {command}: {}", message.join(" "));
            ExitCode::FAILURE
        }
    }
}
