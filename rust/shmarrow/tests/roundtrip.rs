//! The Rust producer to the Rust consumer, in both modes: every value arrives, in place, and a
//! ring far smaller than the stream is reused as batches are released; a busy-polling consumer
//! reads every batch, whether it arrives while the consumer spins or after it went to sleep.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use shmarrow::{Consumer, ConsumerOptions, Mode, Producer, ProducerOptions};

const BATCHES: i64 = 200;
const ROWS: i64 = 500;

fn batch(schema: &Arc<Schema>, first: i64) -> RecordBatch {
    let numbers = Int64Array::from_iter_values(first..first + ROWS);
    let names = StringArray::from_iter_values((first..first + ROWS).map(|i| format!("row {i}")));
    RecordBatch::try_new(schema.clone(), vec![Arc::new(numbers), Arc::new(names)]).unwrap()
}

/// `busy_poll`: the consumer's; the producer then pauses 20 times as long before every 50th batch,
/// so that the consumer's spin runs out and it blocks.
fn round_trip(ring_size: Option<usize>, mode: Mode, busy_poll: Duration) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let address = format!(
        "@shmarrow-rs-roundtrip-{}-{}-{}",
        std::process::id(),
        mode.name(),
        busy_poll.as_micros()
    );
    let options = ProducerOptions { max_in_flight: 4, ring_size, ..ProducerOptions::default() };
    let mut producer = Producer::bind(&address, schema.clone(), options).unwrap();
    let publisher = std::thread::spawn(move || {
        producer.wait_for_consumers(1, Some(Duration::from_secs(20))).unwrap();
        for i in 0..BATCHES {
            if i % 50 == 0 {
                std::thread::sleep(busy_poll * 20);
            }
            producer.publish(&batch(&schema, i * ROWS)).unwrap();
        }
        producer.finish(Some(Duration::from_secs(20))).unwrap();
        producer.stats()
    });
    let options = ConsumerOptions {
        read_timeout: Some(Duration::from_secs(20)),
        busy_poll,
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&address, options).unwrap();
    assert_eq!(consumer.mode(), mode);
    // A producer without request handler fails the request, and goes on with the stream.
    let failed = consumer.request(b"rows=5").unwrap().next_batch().unwrap_err().to_string();
    assert!(failed.contains("no request handler"), "{failed}");
    let mut next = 0;
    while let Some(batch) = consumer.next_batch().unwrap() {
        assert!(consumer.in_shared_memory(&batch));
        let numbers = batch.column(0).as_primitive::<Int64Type>();
        assert!(numbers.values().iter().all(|&n| {
            next += 1;
            n == next - 1
        }));
        assert_eq!(
            batch.column(1).as_string::<i32>().value(0),
            format!("row {}", numbers.value(0))
        );
    }
    assert_eq!(next, BATCHES * ROWS);
    drop(consumer);
    let stats = publisher.join().unwrap();
    assert_eq!(stats.published, BATCHES as u64);
    assert_eq!(stats.consumers_total, 1);
}

#[test]
fn sealed_mode() {
    round_trip(None, Mode::Sealed, Duration::ZERO);
}

#[test]
fn ring_mode_reuses_a_small_ring() {
    // About 2.4 MB of batches through a 256 KiB ring.
    round_trip(Some(256 << 10), Mode::Ring, Duration::ZERO);
}

#[test]
fn busy_polling_in_both_modes() {
    round_trip(Some(256 << 10), Mode::Ring, Duration::from_millis(2));
    round_trip(None, Mode::Sealed, Duration::from_millis(2));
}

#[test]
fn a_consumer_gone_while_its_batch_lives_holds_nothing_back() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let address = format!("@shmarrow-rs-roundtrip-{}-bye", std::process::id());
    let options = ProducerOptions {
        max_in_flight: 2,
        ring_size: Some(256 << 10),
        block_timeout: Some(Duration::from_secs(20)),
        ..ProducerOptions::default()
    };
    let mut producer = Producer::bind(&address, schema.clone(), options).unwrap();
    let (consumer_left, left) = std::sync::mpsc::channel();
    let publisher = std::thread::spawn(move || {
        producer.wait_for_consumers(1, Some(Duration::from_secs(20))).unwrap();
        producer.publish(&batch(&schema, 0)).unwrap();
        left.recv().unwrap(); // the consumer said Bye, its socket still open
        for i in 1..BATCHES {
            producer.publish(&batch(&schema, i * ROWS)).unwrap(); // to nobody, without waiting
        }
        producer.finish(Some(Duration::from_secs(20))).unwrap();
    });
    let options = ConsumerOptions {
        read_timeout: Some(Duration::from_secs(20)),
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&address, options).unwrap();
    let kept = consumer.next_batch().unwrap().unwrap();
    drop(consumer); // Bye; the socket stays open for `kept`
    consumer_left.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the producer publishes meanwhile
    assert_eq!(kept.column(0).as_primitive::<Int64Type>().value(ROWS as usize - 1), ROWS - 1);
    drop(kept); // released: now the producer can finish
    publisher.join().unwrap();
}
