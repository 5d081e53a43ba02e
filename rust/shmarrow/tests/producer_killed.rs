//! The C++ producer killed (SIGKILL) while the Rust consumer reads: a clean error, the batches
//! held stay readable, and once they and the consumer are gone, no fd or mapping is left.

mod common;

use std::fs;

use shmarrow::Consumer;

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd_mappings() -> usize {
    fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains("/memfd:")).count()
}

#[test]
fn producer_killed_midway_leaves_nothing_behind() {
    let Some(cli) = common::cpp_cli() else { return };
    let (fds_before, maps_before) = (open_fds(), memfd_mappings());
    let (mut producer, address) = common::ring_producer(
        &cli,
        &["--batches", "100000", "--rows", "100", "--rate", "100", "--wait-consumers", "1"],
    );
    let mut consumer = Consumer::connect(&address, common::options()).unwrap();
    let held: Vec<_> = (0..3).map(|_| consumer.next_batch().unwrap().unwrap()).collect();
    assert!(memfd_mappings() > maps_before);
    producer.kill().unwrap();
    producer.wait().unwrap();
    let error = loop {
        match consumer.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended normally"),
            Err(error) => break error.to_string(),
        }
    };
    assert!(error.contains("producer closed the connection"), "{error}");
    assert!(consumer.next_batch().is_err(), "the error is final");
    assert!(held.iter().all(|b| b.num_rows() == 100 && consumer.in_shared_memory(b)));
    drop(consumer);
    drop(held);
    assert_eq!(open_fds(), fds_before, "an fd was left open");
    assert_eq!(memfd_mappings(), maps_before, "a mapping was left");
}
