//! Reads a `shmarrow send --mode ring` stream zero-copy:
//! `cargo run --example read_ring -- @my-stream`
use std::time::Duration;

use shmarrow::{Consumer, ConsumerOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "/tmp/shmarrow.sock".into());
    let options =
        ConsumerOptions { connect_timeout: Duration::from_secs(10), ..Default::default() };
    let mut consumer = Consumer::connect(&address, options)?;
    let (mut batches, mut rows) = (0, 0);
    while let Some(batch) = consumer.next_batch()? {
        // The buffers point into the producer's ring: nothing was copied.
        assert!(consumer.in_shared_memory(&batch));
        batches += 1;
        rows += batch.num_rows();
    } // each batch goes back to the producer when its last buffer drops
    println!("{batches} batches, {rows} rows read in place ({} mode)", consumer.mode().name());
    Ok(())
}
