//! Batches are released when their last buffer dies: on another thread, and after the Consumer
//! is gone. With 4 credits and 40 batches, a release that never reached the producer would stall
//! the stream (the read would time out).

mod common;

use std::sync::mpsc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use shmarrow::{Consumer, Mode};

#[test]
fn batches_released_from_another_thread_and_after_the_consumer() {
    let Some(cli) = common::cpp_cli() else { return };
    let (mut producer, address) = common::ring_producer(
        &cli,
        &["--batches", "40", "--rows", "100", "--max-in-flight", "4", "--wait-consumers", "1"],
    );
    let mut consumer = Consumer::connect(&address, common::options()).unwrap();
    assert_eq!(consumer.mode(), Mode::Ring);
    let (to_dropper, dropper_gets) = mpsc::channel();
    let dropper = std::thread::spawn(move || dropper_gets.into_iter().for_each(drop));
    let mut last = None;
    let mut rows = 0;
    while let Some(batch) = consumer.next_batch().unwrap() {
        assert!(consumer.in_shared_memory(&batch), "batch copied out of the ring");
        rows += batch.num_rows();
        if let Some(previous) = last.replace(batch) {
            to_dropper.send(previous).unwrap();
        }
    }
    drop(to_dropper);
    dropper.join().unwrap();
    assert_eq!(rows, 4000);
    drop(consumer);
    // The last batch still reads from the producer's memory, then releases itself.
    let last = last.unwrap();
    let values = last.column(0).as_primitive::<Int64Type>();
    assert_eq!(values.len(), 100);
    let _ = values.iter().flatten().fold(0i64, |a, b| a.wrapping_add(b));
    drop(last);
    assert!(producer.wait().unwrap().success(), "the producer did not see every release");
}

#[test]
fn an_answer_dropped_unread_is_released_and_the_stream_goes_on() {
    let Some(cli) = common::cpp_cli() else { return };
    let (mut producer, address) = common::ring_producer(
        &cli,
        &[
            "--batches",
            "200",
            "--rows",
            "10",
            "--rate",
            "400",
            "--serve-requests",
            "--wait-consumers",
            "1",
        ],
    );
    let mut consumer = Consumer::connect(&address, common::options()).unwrap();
    drop(consumer.request(b"rows=50").unwrap()); // its answer arrives later, unread
    let mut answer = consumer.request(b"rows=7").unwrap();
    assert_eq!(answer.schema().unwrap().fields().len(), 2);
    assert_eq!(answer.next_batch().unwrap().unwrap().num_rows(), 7);
    assert!(answer.next_batch().unwrap().is_none());
    drop(answer);
    let mut batches = 0;
    while consumer.next_batch().unwrap().is_some() {
        batches += 1;
    }
    assert_eq!(batches, 200);
    drop(consumer);
    assert!(producer.wait().unwrap().success());
}
