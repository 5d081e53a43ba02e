//! The producer, sealed mode: each published batch becomes a sealed memfd holding an Arrow IPC
//! stream (one counted copy of its buffers), sent to every consumer with a Batch message; the
//! credits, releases, back-pressure and End of docs/protocol.md.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{Schema, SchemaRef};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::net::{SocketFlags, SocketType};

use crate::error::{Error, Result};
use crate::protocol::{self as proto, BatchRef, Reader, Type, Writer};
use crate::sys;

const ERROR_PROTOCOL: u32 = 1;
const ERROR_VERSION: u32 = 2;
const ERROR_SCHEMA: u32 = 3;
const ERROR_LIMIT: u32 = 4;
const ERROR_REFUSED: u32 = 6;

/// Limits of a producer.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// Batches a consumer may hold at once (a consumer may ask for fewer).
    pub max_in_flight: u32,
    /// Consumers served at once; more are refused (Error code 4).
    pub max_consumers: u32,
    /// How long `publish` waits for a consumer that holds its quota (None: forever).
    pub block_timeout: Option<Duration>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions { max_in_flight: 64, max_consumers: 64, block_timeout: None }
    }
}

/// Counters of a producer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProducerStats {
    /// Batches published.
    pub published: u64,
    /// Bytes copied into shared memory (each batch's IPC stream, once).
    pub bytes_copied: u64,
    /// Consumers that completed the handshake.
    pub consumers_total: u64,
}

/// One published batch: its sealed memfd, shared by every consumer it is queued for.
struct Published {
    sequence: u64,
    memfd: OwnedFd,
}

struct Peer {
    socket: OwnedFd,
    credits: usize,
    held: HashSet<u64>,
    queue: VecDeque<Arc<Published>>,
    end_sent: bool,
    gone: bool, // closed, said Bye, or broke the protocol: dropped at the next sweep
}

/// A producer of the stream protocol in sealed mode, serving any number of consumers on a
/// `SOCK_SEQPACKET` socket (C++, Python and Rust consumers alike). It runs on the caller's thread:
/// `publish`, `wait_for_consumers` and `finish` serve the consumers while they wait.
pub struct Producer {
    options: ProducerOptions,
    listener: OwnedFd,
    socket_file: Option<String>,
    schema: SchemaRef,
    waiting: Vec<OwnedFd>, // accepted, Hello not yet read
    peers: Vec<Peer>,
    writer: Writer,
    receive_buffer: Vec<u8>,
    next_sequence: u64,
    ended: bool,
    stats: ProducerStats,
}

impl Producer {
    /// Listens on `address` (a socket path, created with mode 0600, or `@name`) for consumers of
    /// a stream of batches with `schema`.
    pub fn bind(address: &str, schema: SchemaRef, options: ProducerOptions) -> Result<Producer> {
        let listener = sys::listen(address, SocketType::SEQPACKET)?;
        Ok(Producer {
            options,
            listener,
            socket_file: (!address.starts_with('@')).then(|| address.to_string()),
            schema,
            waiting: Vec::new(),
            peers: Vec::new(),
            writer: Writer::default(),
            receive_buffer: vec![0; proto::MAX_MESSAGE_SIZE],
            next_sequence: 1,
            ended: false,
            stats: ProducerStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Serves until `count` consumers are connected (None: waits forever).
    pub fn wait_for_consumers(&mut self, count: usize, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.live_peers() < count {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(format!(
                    "{} of {count} consumers connected in time",
                    self.live_peers()
                )));
            }
            self.serve(deadline)?;
        }
        Ok(())
    }

    /// Publishes one batch to every consumer: written once into a sealed memfd as an Arrow IPC
    /// stream. Waits while a consumer holds its quota of batches (back-pressure).
    pub fn publish(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.ended {
            return Err(Error::Producer("publish after end".into()));
        }
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::Producer("the batch's schema is not the stream's".into()));
        }
        let deadline = self.options.block_timeout.map(|t| Instant::now() + t);
        while self.peers.iter().any(|p| !p.gone && p.queue.len() >= p.credits) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout("a consumer holds its quota of batches".into()));
            }
            self.serve(deadline)?;
        }
        let published = Arc::new(Published { sequence: self.next_sequence, memfd: self.sealed_stream(batch)? });
        self.next_sequence += 1;
        self.stats.published += 1;
        for peer in self.peers.iter_mut().filter(|p| !p.gone) {
            peer.queue.push_back(published.clone());
        }
        self.flush_all();
        Ok(())
    }

    /// Ends the stream: every consumer receives End after the batches before it.
    pub fn end(&mut self) {
        self.ended = true;
        self.flush_all();
    }

    /// After `end`: serves until every consumer has received everything and released it (or
    /// went away), or `timeout` passed; then closes the connections.
    pub fn finish(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.end();
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.peers.iter().any(|p| !p.gone && (!p.end_sent || !p.held.is_empty())) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout("consumers still hold batches".into()));
            }
            self.serve(deadline)?;
        }
        self.peers.clear();
        Ok(())
    }

    fn live_peers(&self) -> usize {
        self.peers.iter().filter(|p| !p.gone).count()
    }

    /// The batch as a complete Arrow IPC stream in a memfd sealed against any change.
    fn sealed_stream(&mut self, batch: &RecordBatch) -> Result<OwnedFd> {
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)
            .map_err(|e| Error::arrow("writing the schema", e))?;
        writer.write(batch).map_err(|e| Error::arrow(format!("writing batch {}", self.next_sequence), e))?;
        let bytes = writer.into_inner().map_err(|e| Error::arrow("ending the stream", e))?;
        let memfd = rustix::fs::memfd_create("shmarrow-rs", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::io("memfd_create", e))?;
        let raw = memfd.as_raw_fd();
        let mut written = 0;
        while written < bytes.len() {
            written += rustix::io::write(&memfd, &bytes[written..])
                .map_err(|e| Error::io(format!("write(memfd {raw})"), e))?;
        }
        rustix::fs::fcntl_add_seals(&memfd, sys::SEALS_HANDOVER)
            .map_err(|e| Error::io(format!("fcntl(memfd {raw}, F_ADD_SEALS)"), e))?;
        self.stats.bytes_copied += bytes.len() as u64;
        Ok(memfd)
    }

    /// Waits for one round of socket events (until `deadline`) and handles them.
    fn serve(&mut self, deadline: Option<Instant>) -> Result<()> {
        let (listener_ready, waiting_ready, peers_ready) = {
            let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
            fds.extend(self.waiting.iter().map(|fd| PollFd::new(fd, PollFlags::IN)));
            fds.extend(self.peers.iter().map(|p| PollFd::new(&p.socket, PollFlags::IN)));
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let timeout = left.map(|l| Timespec { tv_sec: l.as_secs() as i64, tv_nsec: l.subsec_nanos() as i64 });
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("poll", e)),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            let waiting = self.waiting.len();
            (ready[0], ready[1..1 + waiting].to_vec(), ready[1 + waiting..].to_vec())
        };
        for (i, ready) in peers_ready.into_iter().enumerate().rev() {
            if ready {
                self.read_peer(i);
            }
        }
        for (i, ready) in waiting_ready.into_iter().enumerate().rev() {
            if ready {
                let socket = self.waiting.swap_remove(i);
                self.greet(socket);
            }
        }
        if listener_ready {
            self.accept();
        }
        self.peers.retain(|p| !p.gone);
        self.flush_all();
        Ok(())
    }

    fn accept(&mut self) {
        while let Ok(socket) = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            let own_uid = rustix::process::getuid().as_raw();
            let peer_uid = rustix::net::sockopt::socket_peercred(&socket).map(|c| c.uid.as_raw());
            if peer_uid != Ok(own_uid) {
                self.refuse(&socket, ERROR_REFUSED, "this producer serves only its own uid".into());
            } else if self.waiting.len() + self.peers.len() >= self.options.max_consumers as usize {
                let limit = self.options.max_consumers;
                self.refuse(&socket, ERROR_LIMIT, format!("the producer serves {limit} consumers already"));
            } else {
                self.waiting.push(socket);
            }
        }
    }

    /// Sends an Error; the connection closes when `socket` drops.
    fn refuse(&mut self, socket: &OwnedFd, code: u32, message: String) {
        let _ = sys::try_send(socket.as_fd(), self.writer.error(code, &message));
    }

    /// Reads the Hello of a new connection and answers Welcome or Error.
    fn greet(&mut self, socket: OwnedFd) {
        let hello = match sys::receive(socket.as_fd(), &mut self.receive_buffer) {
            Ok(Some(received)) if received.bytes > 0 && received.fds.is_empty() => {
                let mut reader = Reader::new(&self.receive_buffer[..received.bytes]);
                reader.header().and_then(|h| match h.kind {
                    Type::Hello => reader.hello(),
                    kind => Err(Error::Protocol(format!("expected Hello, got {kind:?}"))),
                })
            }
            Ok(None) => return self.waiting.push(socket), // woken for nothing: still waiting
            Ok(Some(_)) => Err(Error::Protocol("a Hello must be a message without fds".into())),
            Err(error) => Err(error),
        };
        let hello = match hello {
            Ok(hello) => hello,
            Err(error) => return self.refuse(&socket, ERROR_PROTOCOL, error.to_string()),
        };
        if hello.major != proto::MAJOR_VERSION {
            let message = format!(
                "consumer speaks protocol {}.{}; this producer speaks {}.{}",
                hello.major,
                hello.minor,
                proto::MAJOR_VERSION,
                proto::MINOR_VERSION
            );
            return self.refuse(&socket, ERROR_VERSION, message);
        }
        let schema = match self.consumer_schema(&hello.columns, &hello.required_schema) {
            Ok(schema) => schema,
            Err(message) => return self.refuse(&socket, ERROR_SCHEMA, message),
        };
        let schema = match encapsulated_schema(&schema) {
            Ok(bytes) => bytes,
            Err(message) => return self.refuse(&socket, ERROR_SCHEMA, message),
        };
        let credits = match hello.max_in_flight {
            0 => self.options.max_in_flight,
            asked => asked.min(self.options.max_in_flight),
        };
        self.stats.consumers_total += 1;
        let welcome = proto::Welcome {
            major: proto::MAJOR_VERSION,
            minor: proto::MINOR_VERSION,
            features: hello.features & proto::FEATURE_PROJECTION,
            ring_mode: false,
            consumer_id: self.stats.consumers_total as u32,
            ring_size: 0,
            max_consumers: self.options.max_consumers,
            max_in_flight: credits,
            schema,
            queue_offset: 0,
            queue_capacity: 0,
        };
        if matches!(sys::try_send(socket.as_fd(), self.writer.welcome(&welcome)), Ok(true)) {
            self.peers.push(Peer {
                socket,
                credits: credits as usize,
                held: HashSet::new(),
                queue: VecDeque::new(),
                end_sent: false,
                gone: false,
            });
        }
    }

    /// The schema a consumer receives: projected to the columns it asked for; the required
    /// schema, if any, must match it exactly. Else why not.
    fn consumer_schema(&self, columns: &[String], required: &[u8]) -> Result<Schema, String> {
        let mut schema = (*self.schema).clone();
        if !columns.is_empty() {
            let mut indices = Vec::new();
            for name in columns {
                let mut matching = self.schema.fields().iter().enumerate().filter(|(_, f)| f.name() == name);
                match (matching.next(), matching.next()) {
                    (Some((i, _)), None) => indices.push(i),
                    _ => return Err(format!("the stream has no single column '{name}'")),
                }
            }
            schema = schema.project(&indices).map_err(|e| e.to_string())?;
        }
        if !required.is_empty() {
            let wanted = crate::ipc::decode_schema(required).map_err(|e| e.to_string())?;
            if wanted.fields() != schema.fields() {
                return Err(format!("the consumer requires {wanted:?}; the stream has {schema:?}"));
            }
        }
        Ok(schema)
    }

    /// Handles what one consumer sent; a consumer that broke the protocol gets an Error and is
    /// disconnected (the batches it held return to the producer with the connection).
    fn read_peer(&mut self, i: usize) {
        loop {
            let received = match sys::receive(self.peers[i].socket.as_fd(), &mut self.receive_buffer) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(_) => {
                    self.peers[i].gone = true;
                    return;
                }
            };
            if received.bytes == 0 {
                self.peers[i].gone = true;
                return;
            }
            let mut reader = Reader::new(&self.receive_buffer[..received.bytes]);
            let mut released = Vec::new();
            let handled = reader.header().and_then(|header| match header.kind {
                _ if !received.fds.is_empty() => Err(Error::Protocol("a consumer sent fds".into())),
                Type::Release => reader.release(&mut released),
                Type::Bye => {
                    self.peers[i].queue.clear();
                    reader.expect_end("Bye")
                }
                kind => Err(Error::Protocol(format!("unexpected {kind:?} from a consumer"))),
            });
            let peer = &mut self.peers[i];
            let unknown = released.iter().find(|&&s| !peer.held.remove(&s)).copied();
            let outcome = match (handled, unknown) {
                (Err(error), _) => Err(error.to_string()),
                (Ok(()), Some(sequence)) => Err(format!("released batch {sequence}, which it does not hold")),
                (Ok(()), None) => Ok(()),
            };
            if let Err(message) = outcome {
                let socket = self.peers[i].socket.try_clone();
                if let Ok(socket) = socket {
                    self.refuse(&socket, ERROR_PROTOCOL, message);
                }
                self.peers[i].gone = true;
                return;
            }
        }
    }

    /// Sends each consumer what its credits allow, then End once its queue is empty.
    fn flush_all(&mut self) {
        for peer in self.peers.iter_mut().filter(|p| !p.gone) {
            while peer.held.len() < peer.credits {
                let Some(next) = peer.queue.front() else { break };
                let message = BatchRef { sequence: next.sequence, ..BatchRef::default() };
                match sys::try_send_fds(peer.socket.as_fd(), self.writer.batch(&message), &[next.memfd.as_fd()]) {
                    Ok(true) => {
                        peer.held.insert(next.sequence);
                        peer.queue.pop_front();
                    }
                    Ok(false) => break, // the socket is full: at the next round
                    Err(_) => {
                        peer.gone = true;
                        break;
                    }
                }
            }
            if self.ended && peer.queue.is_empty() && !peer.end_sent && !peer.gone {
                match sys::try_send(peer.socket.as_fd(), self.writer.end()) {
                    Ok(true) => peer.end_sent = true,
                    Ok(false) => {}
                    Err(_) => peer.gone = true,
                }
            }
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_file {
            let _ = rustix::fs::unlink(path.as_str());
        }
    }
}

/// A schema as the protocol sends it: an encapsulated IPC Schema message (the first message of
/// an IPC stream that has nothing else).
fn encapsulated_schema(schema: &Schema) -> Result<Vec<u8>, String> {
    let stream = StreamWriter::try_new(Vec::new(), schema).and_then(|w| w.into_inner()).map_err(|e| e.to_string())?;
    // The stream is the schema message followed by the 8-byte end-of-stream marker.
    Ok(stream[..stream.len() - 8].to_vec())
}
