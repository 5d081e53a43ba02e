//! An event loop without blocking reads: `try_next` until `Pending`, then poll(2) the consumer's
//! fd (what tokio's `AsyncFd` does for you; see rust/README.md).
//! `cargo run --example poll_loop -- @my-stream`
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use shmarrow::{Consumer, ConsumerOptions, Poll};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "/tmp/shmarrow.sock".into());
    let options =
        ConsumerOptions { connect_timeout: Duration::from_secs(10), ..Default::default() };
    let mut consumer = Consumer::connect(&address, options)?;
    let (mut batches, mut rows, mut sleeps) = (0, 0, 0);
    loop {
        match consumer.try_next()? {
            Poll::Batch(batch) => {
                batches += 1;
                rows += batch.num_rows();
            }
            Poll::End => break,
            Poll::Pending => {
                sleeps += 1;
                poll(&mut [PollFd::new(&consumer.as_fd(), PollFlags::IN)], None)?;
            }
        }
    }
    println!("{batches} batches, {rows} rows ({sleeps} waits)");
    Ok(())
}
