//! `shmarrow-rs bench-handover`, the Rust consumer of bench/run's hand-over rows: against a
//! producer that stamps each batch (column 0, row 0) with CLOCK_MONOTONIC as handover_bench does,
//! it prints one consumer JSON line with a sample per batch after the warm-up, none negative.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rustix::time::{clock_gettime, ClockId};
use shmarrow::{Producer, ProducerOptions};

const BATCHES: i64 = 12;
const WARMUP: usize = 2;

fn stamped(schema: &Arc<Schema>) -> RecordBatch {
    let now = clock_gettime(ClockId::Monotonic);
    let mut values: Vec<i64> = (0..1000).collect();
    values[0] = now.tv_sec * 1_000_000_000 + now.tv_nsec;
    RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap()
}

fn run(busy_poll_us: u64) {
    let schema = Arc::new(Schema::new(vec![Field::new("c0", DataType::Int64, false)]));
    let address = format!("@shmarrow-rs-bench-{}-{busy_poll_us}", std::process::id());
    // One batch in flight: each publish waits until the consumer released the one before.
    let options = ProducerOptions {
        ring_size: Some(1 << 20),
        max_in_flight: 1,
        ..ProducerOptions::default()
    };
    let mut producer = Producer::bind(&address, schema.clone(), options).unwrap();
    let consumer = Command::new(env!("CARGO_BIN_EXE_shmarrow-rs"))
        .args(["bench-handover", "--socket", &address, "--warmup", &WARMUP.to_string()])
        .args(["--busy-poll-us", &busy_poll_us.to_string(), "--bytes", "8000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    producer.wait_for_consumers(1, Some(Duration::from_secs(20))).unwrap();
    for _ in 0..BATCHES {
        producer.publish(&stamped(&schema)).unwrap();
    }
    producer.finish(Some(Duration::from_secs(20))).unwrap();
    let out = consumer.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    let expected_head = format!(
        "{{\"role\":\"consumer\",\"kind\":\"handover\",\"transport\":\"ring\",\"bytes\":8000,\"busy_poll_us\":{busy_poll_us},\"vmhwm_kb\":"
    );
    assert!(line.starts_with(&expected_head), "{line}");
    let samples = line.split("\"samples_ns\":[").nth(1).unwrap().trim_end().trim_end_matches("]}");
    let samples: Vec<i64> = samples.split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(samples.len(), BATCHES as usize - WARMUP);
    assert!(samples.iter().all(|&ns| ns >= 0), "{samples:?}");
}

#[test]
fn blocking() {
    run(0);
}

#[test]
fn busy_polling() {
    run(1_000_000);
}
