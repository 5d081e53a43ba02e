//! Zero-copy Apache Arrow streams between processes over memfd shared memory: a Rust consumer of
//! shmarrow's protocol (docs/protocol.md in the shmarrow repository).
//!
//! A producer (`shmarrow send`, or a C++/Python program using shmarrow) publishes record batches
//! in shared memory; [`Consumer`] receives them as [`arrow_array::RecordBatch`]es whose buffers
//! point into that memory, read-only, without a copy. When the last buffer of a batch is dropped,
//! on any thread, the batch is released back to the producer. [`Producer`] publishes batches in
//! sealed mode to C++, Python and Rust consumers.
//!
//! ```no_run
//! use shmarrow::{Consumer, ConsumerOptions};
//!
//! let consumer = Consumer::connect("@my-stream", ConsumerOptions::default())?;
//! for batch in consumer {
//!     let batch = batch?;
//!     println!("{} rows", batch.num_rows());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod consumer;
mod error;
mod ipc;
mod producer;
mod protocol;
pub mod summary;
mod sys;

pub use consumer::{Consumer, ConsumerOptions, ConsumerStats, MemfdInfo, Mode, Poll, Response};
pub use error::{Error, Result};
pub use ipc::{field_type_name, type_name};
pub use producer::{Producer, ProducerOptions, ProducerStats};
