//! The producer. Sealed mode: each published batch becomes a sealed memfd holding an Arrow IPC
//! stream, sent to every consumer with a Batch message. Ring mode: each batch's buffers are
//! written into one shared ring, sealed against consumers' writes, with its metadata pointing at
//! them. Either way one counted copy of the buffers; the credits, releases, back-pressure and End
//! of docs/protocol.md.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions, StreamWriter};
use arrow_ipc::{MessageHeader, MetadataVersion};
use arrow_schema::{Schema, SchemaRef};
use flatbuffers::FlatBufferBuilder;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{SocketFlags, SocketType};

use crate::error::{Error, Result};
use crate::protocol::{self as proto, BatchRef, Reader, Type, Writer};
use crate::sys::{self, Mapping};

const ERROR_PROTOCOL: u32 = 1;
const ERROR_VERSION: u32 = 2;
const ERROR_SCHEMA: u32 = 3;
const ERROR_LIMIT: u32 = 4;
const ERROR_HANDLER: u32 = 5;
const ERROR_REFUSED: u32 = 6;

/// Limits of a producer.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// Batches a consumer may hold at once (a consumer may ask for fewer).
    pub max_in_flight: u32,
    /// Consumers served at once; more are refused (Error code 4).
    pub max_consumers: u32,
    /// How long `publish` waits for a consumer that holds its quota, or for room in the ring
    /// (None: forever).
    pub block_timeout: Option<Duration>,
    /// Some(bytes): ring mode, with a ring of that size; None: sealed mode.
    pub ring_size: Option<usize>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            max_in_flight: 64,
            max_consumers: 64,
            block_timeout: None,
            ring_size: None,
        }
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

/// Where a published batch is.
enum Payload {
    /// Sealed mode: a sealed memfd holding the batch as an IPC stream.
    Memfd(OwnedFd),
    /// Ring mode: its metadata in the ring, and the list its block goes to once free.
    Ring { metadata_offset: u64, metadata_length: u32, freed: Arc<Mutex<Vec<u64>>> },
}

/// One published batch, shared by every consumer it is queued for or held by; in ring mode its
/// block is reused once the last of them lets go.
struct Published {
    sequence: u64,
    payload: Payload,
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Payload::Ring { freed, .. } = &self.payload {
            freed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(self.sequence);
        }
    }
}

/// Ring mode's shared memory: blocks allocated circularly, each freed when its batch is.
struct Ring {
    memfd: OwnedFd,
    mapping: Mapping,
    blocks: VecDeque<Block>, // oldest first
    freed: Arc<Mutex<Vec<u64>>>,
}

struct Block {
    start: usize,
    end: usize,
    sequence: u64,
    free: bool,
}

const BLOCK_ALIGNMENT: usize = 64;

fn aligned(n: usize) -> usize {
    n.div_ceil(BLOCK_ALIGNMENT) * BLOCK_ALIGNMENT
}

impl Ring {
    fn create(size: usize) -> Result<Ring> {
        let memfd = rustix::fs::memfd_create(
            "shmarrow-rs-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| Error::io("memfd_create", e))?;
        let raw = memfd.as_raw_fd();
        rustix::fs::ftruncate(&memfd, size as u64)
            .map_err(|e| Error::io(format!("ftruncate(memfd {raw}, {size})"), e))?;
        let mapping = Mapping::map_writable(memfd.as_fd())?;
        // Consumers can neither write nor resize it; this producer's mapping stays writable.
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&memfd, seals)
            .map_err(|e| Error::io(format!("fcntl(memfd {raw}, F_ADD_SEALS)"), e))?;
        Ok(Ring {
            memfd,
            mapping,
            blocks: VecDeque::new(),
            freed: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// An fd for a consumer, opened read-only through /proc/self/fd.
    fn consumer_fd(&self) -> Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.memfd.as_raw_fd());
        rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, rustix::fs::Mode::empty())
            .map_err(|e| Error::io(format!("open({path}, O_RDONLY)"), e))
    }

    /// Where `need` bytes fit now, after taking back the blocks freed since.
    fn allocate(&mut self, need: usize, sequence: u64) -> Option<usize> {
        let freed = std::mem::take(
            &mut *self.freed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for block in self.blocks.iter_mut().filter(|b| freed.contains(&b.sequence)) {
            block.free = true;
        }
        while self.blocks.front().is_some_and(|b| b.free) {
            self.blocks.pop_front();
        }
        let size = self.mapping.len();
        let start = match (self.blocks.front(), self.blocks.back()) {
            (Some(oldest), Some(newest)) if newest.start >= oldest.start => {
                // Not wrapped: after the newest block, or from the start up to the oldest.
                if newest.end + need <= size {
                    newest.end
                } else if need <= oldest.start {
                    0
                } else {
                    return None;
                }
            }
            (Some(oldest), Some(newest)) if newest.end + need <= oldest.start => newest.end,
            (Some(_), _) => return None,
            (None, _) if need <= size => 0,
            (None, _) => return None,
        };
        self.blocks.push_back(Block { start, end: start + need, sequence, free: false });
        Some(start)
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.mapping.len(), "a block inside the ring");
        // SAFETY: inside the mapping (checked), in a block no consumer was told of yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.mapping.ptr().as_ptr().add(offset),
                bytes.len(),
            )
        };
    }
}

/// The record batch Message flatbuffer of `encoded` (whose buffer offsets are relative to its
/// body) with offsets relative to the ring's start, the body being at `body_offset`, and the
/// ring as the body.
fn ring_metadata(encoded: &[u8], body_offset: usize, ring_size: usize) -> Result<Vec<u8>> {
    let message = arrow_ipc::root_as_message(encoded)
        .map_err(|e| Error::Protocol(format!("arrow-ipc wrote a malformed message: {e}")))?;
    let batch = message
        .header_as_record_batch()
        .ok_or_else(|| Error::Protocol("arrow-ipc wrote no record batch".into()))?;
    let mut fbb = FlatBufferBuilder::new();
    let nodes: Vec<arrow_ipc::FieldNode> = batch.nodes().into_iter().flatten().copied().collect();
    let buffers: Vec<arrow_ipc::Buffer> = batch
        .buffers()
        .into_iter()
        .flatten()
        .map(|b| arrow_ipc::Buffer::new(b.offset() + body_offset as i64, b.length()))
        .collect();
    let nodes = fbb.create_vector(&nodes);
    let buffers = fbb.create_vector(&buffers);
    let variadic = batch
        .variadicBufferCounts()
        .map(|counts| fbb.create_vector(&counts.iter().collect::<Vec<i64>>()));
    let mut record_batch = arrow_ipc::RecordBatchBuilder::new(&mut fbb);
    record_batch.add_length(batch.length());
    record_batch.add_nodes(nodes);
    record_batch.add_buffers(buffers);
    if let Some(variadic) = variadic {
        record_batch.add_variadicBufferCounts(variadic);
    }
    let record_batch = record_batch.finish();
    let mut builder = arrow_ipc::MessageBuilder::new(&mut fbb);
    builder.add_version(MetadataVersion::V5);
    builder.add_header_type(MessageHeader::RecordBatch);
    builder.add_header(record_batch.as_union_value());
    builder.add_bodyLength(ring_size as i64);
    let root = builder.finish();
    fbb.finish(root, None);
    Ok(fbb.finished_data().to_vec())
}

struct Peer {
    socket: OwnedFd,
    credits: usize,
    held: HashMap<u64, Arc<Published>>,
    queue: VecDeque<Arc<Published>>,
    end_sent: bool,
    bye: bool,  // said Bye: gets nothing more, keeps what it holds until released
    gone: bool, // closed, or broke the protocol: dropped at the next sweep
}

impl Peer {
    /// Still receiving the stream.
    fn receiving(&self) -> bool {
        !self.gone && !self.bye
    }
}

/// A producer of the stream protocol in sealed or ring mode, serving any number of consumers on a
/// `SOCK_SEQPACKET` socket (C++, Python and Rust consumers alike). It runs on the caller's thread:
/// `publish`, `wait_for_consumers` and `finish` serve the consumers while they wait.
pub struct Producer {
    options: ProducerOptions,
    listener: OwnedFd,
    socket_file: Option<String>,
    schema: SchemaRef,
    ring: Option<Ring>,
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
        let ring = match options.ring_size {
            Some(size) => {
                crate::ipc::check_no_dictionaries(&schema)?;
                Some(Ring::create(size)?)
            }
            None => None,
        };
        let listener = sys::listen(address, SocketType::SEQPACKET)?;
        Ok(Producer {
            options,
            listener,
            socket_file: (!address.starts_with('@')).then(|| address.to_string()),
            schema,
            ring,
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

    /// Publishes one batch to every consumer: its buffers written once into shared memory (the
    /// ring, or a sealed memfd holding it as an Arrow IPC stream). Waits while a consumer holds
    /// its quota of batches, or the ring is full (back-pressure).
    pub fn publish(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.ended {
            return Err(Error::Producer("publish after end".into()));
        }
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::Producer("the batch's schema is not the stream's".into()));
        }
        let deadline = self.options.block_timeout.map(|t| Instant::now() + t);
        while self.peers.iter().any(|p| p.receiving() && p.queue.len() >= p.credits) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout("a consumer holds its quota of batches".into()));
            }
            self.serve(deadline)?;
        }
        let payload = match self.ring.is_some() {
            true => self.write_to_ring(batch, deadline)?,
            false => Payload::Memfd(self.sealed_stream(batch)?),
        };
        let published = Arc::new(Published { sequence: self.next_sequence, payload });
        self.next_sequence += 1;
        self.stats.published += 1;
        for peer in self.peers.iter_mut().filter(|p| p.receiving()) {
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
        while self
            .peers
            .iter()
            .any(|p| !p.gone && ((p.receiving() && !p.end_sent) || !p.held.is_empty()))
        {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout("consumers still hold batches".into()));
            }
            self.serve(deadline)?;
        }
        self.peers.clear();
        Ok(())
    }

    fn live_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.receiving()).count()
    }

    /// The batch as a complete Arrow IPC stream in a memfd sealed against any change.
    fn sealed_stream(&mut self, batch: &RecordBatch) -> Result<OwnedFd> {
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)
            .map_err(|e| Error::arrow("writing the schema", e))?;
        writer
            .write(batch)
            .map_err(|e| Error::arrow(format!("writing batch {}", self.next_sequence), e))?;
        let bytes = writer.into_inner().map_err(|e| Error::arrow("ending the stream", e))?;
        let memfd = rustix::fs::memfd_create(
            "shmarrow-rs",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
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

    /// Writes the batch's body and metadata into a block of the ring, waiting for room.
    fn write_to_ring(&mut self, batch: &RecordBatch, deadline: Option<Instant>) -> Result<Payload> {
        let sequence = self.next_sequence;
        let (_, encoded) = IpcDataGenerator::default()
            .encode(
                batch,
                &mut DictionaryTracker::new(false),
                &IpcWriteOptions::default(),
                &mut Default::default(),
            )
            .map_err(|e| Error::arrow(format!("encoding batch {sequence}"), e))?;
        let ring_size = self.ring.as_ref().expect("ring mode").mapping.len();
        // Its length does not depend on the offsets: measured first, written once placed.
        let metadata_length = ring_metadata(&encoded.ipc_message, 0, ring_size)?.len();
        let body_length = aligned(encoded.arrow_data.len());
        let need = body_length + aligned(metadata_length);
        if need > ring_size {
            return Err(Error::Producer(format!(
                "batch {sequence} needs {need} bytes; the ring has {ring_size}"
            )));
        }
        let start = loop {
            if let Some(start) = self.ring.as_mut().expect("ring mode").allocate(need, sequence) {
                break start;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(format!(
                    "no room for batch {sequence} in the ring in time"
                )));
            }
            self.serve(deadline)?;
        };
        let metadata = ring_metadata(&encoded.ipc_message, start, ring_size)?;
        let ring = self.ring.as_mut().expect("ring mode");
        ring.write(start, &encoded.arrow_data);
        ring.write(start + body_length, &metadata);
        self.stats.bytes_copied += encoded.arrow_data.len() as u64;
        Ok(Payload::Ring {
            metadata_offset: (start + body_length) as u64,
            metadata_length: metadata.len() as u32,
            freed: ring.freed.clone(),
        })
    }

    /// Waits for one round of socket events (until `deadline`) and handles them.
    fn serve(&mut self, deadline: Option<Instant>) -> Result<()> {
        let (listener_ready, waiting_ready, peers_ready) = {
            let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
            fds.extend(self.waiting.iter().map(|fd| PollFd::new(fd, PollFlags::IN)));
            fds.extend(self.peers.iter().map(|p| PollFd::new(&p.socket, PollFlags::IN)));
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let timeout = left
                .map(|l| Timespec { tv_sec: l.as_secs() as i64, tv_nsec: l.subsec_nanos() as i64 });
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
        while let Ok(socket) =
            rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        {
            let own_uid = rustix::process::getuid().as_raw();
            let peer_uid = rustix::net::sockopt::socket_peercred(&socket).map(|c| c.uid.as_raw());
            if peer_uid != Ok(own_uid) {
                self.refuse(&socket, ERROR_REFUSED, "this producer serves only its own uid".into());
            } else if self.waiting.len() + self.peers.len() >= self.options.max_consumers as usize {
                let limit = self.options.max_consumers;
                self.refuse(
                    &socket,
                    ERROR_LIMIT,
                    format!("the producer serves {limit} consumers already"),
                );
            } else {
                self.waiting.push(socket);
            }
        }
    }

    /// Sends an Error; the connection closes when `socket` drops.
    fn refuse(&mut self, socket: &OwnedFd, code: u32, message: String) {
        let _ = sys::try_send(socket.as_fd(), self.writer.error(0, code, &message));
    }

    /// Reads the Hello of a new connection and answers Welcome or Error.
    fn greet(&mut self, socket: OwnedFd) {
        let hello = match sys::receive(socket.as_fd(), &mut self.receive_buffer) {
            // A 1.2 consumer sends its wake region with the Hello: this producer speaks 1.1, so
            // the fd is closed (dropped with `received`) and the Welcome tells it to fall back.
            Ok(Some(received)) if received.bytes > 0 => {
                let mut reader = Reader::new(&self.receive_buffer[..received.bytes]);
                reader.header().and_then(|h| match h.kind {
                    Type::Hello => reader.hello(),
                    kind => Err(Error::Protocol(format!("expected Hello, got {kind:?}"))),
                })
            }
            Ok(None) => return self.waiting.push(socket), // woken for nothing: still waiting
            Ok(Some(_)) => Err(Error::Protocol("empty Hello".into())),
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
        if self.ring.is_some() && !hello.columns.is_empty() {
            let message = "this producer serves projections in sealed mode only".to_string();
            return self.refuse(&socket, ERROR_SCHEMA, message);
        }
        let subset = hello.flags & proto::HELLO_SCHEMA_SUBSET != 0;
        let schema = match self.consumer_schema(&hello.columns, &hello.required_schema, subset) {
            Ok(schema) => schema,
            Err(message) => return self.refuse(&socket, ERROR_SCHEMA, message),
        };
        let schema = match crate::ipc::encode_schema(&schema) {
            Ok(bytes) => bytes,
            Err(error) => return self.refuse(&socket, ERROR_SCHEMA, error.to_string()),
        };
        let credits = match hello.max_in_flight {
            0 => self.options.max_in_flight,
            asked => asked.min(self.options.max_in_flight),
        };
        self.stats.consumers_total += 1;
        let welcome = proto::Welcome {
            major: proto::MAJOR_VERSION,
            minor: proto::MINOR_VERSION,
            features: hello.features
                & if self.ring.is_some() { 0 } else { proto::FEATURE_PROJECTION },
            ring_mode: self.ring.is_some(),
            consumer_id: self.stats.consumers_total as u32,
            ring_size: self.ring.as_ref().map_or(0, |r| r.mapping.len() as u64),
            max_consumers: self.options.max_consumers,
            max_in_flight: credits,
            schema,
            queue_offset: 0,
            queue_capacity: 0,
        };
        let ring_fd = match self.ring.as_ref().map(Ring::consumer_fd).transpose() {
            Ok(fd) => fd,
            Err(error) => return self.refuse(&socket, ERROR_LIMIT, error.to_string()),
        };
        let fds: Vec<_> = ring_fd.iter().map(|fd| fd.as_fd()).collect();
        if matches!(
            sys::try_send_fds(socket.as_fd(), self.writer.welcome(&welcome), &fds),
            Ok(true)
        ) {
            self.peers.push(Peer {
                socket,
                credits: credits as usize,
                held: HashMap::new(),
                queue: VecDeque::new(),
                end_sent: false,
                bye: false,
                gone: false,
            });
        }
    }

    /// The schema a consumer receives: projected to the columns it asked for; the required
    /// schema, if any, must match it (exactly, or as a subset). Else why not.
    fn consumer_schema(
        &self,
        columns: &[String],
        required: &[u8],
        subset: bool,
    ) -> Result<Schema, String> {
        let mut schema = (*self.schema).clone();
        if !columns.is_empty() {
            let mut indices = Vec::new();
            for name in columns {
                let mut matching =
                    self.schema.fields().iter().enumerate().filter(|(_, f)| f.name() == name);
                match (matching.next(), matching.next()) {
                    (Some((i, _)), None) => indices.push(i),
                    _ => return Err(format!("the stream has no single column '{name}'")),
                }
            }
            schema = schema.project(&indices).map_err(|e| e.to_string())?;
        }
        if !required.is_empty() {
            let wanted = crate::ipc::decode_schema(required).map_err(|e| e.to_string())?;
            crate::ipc::check_schema(&wanted, &schema, subset)?;
        }
        Ok(schema)
    }

    /// Handles what one consumer sent; a consumer that broke the protocol gets an Error and is
    /// disconnected (the batches it held return to the producer with the connection).
    fn read_peer(&mut self, i: usize) {
        loop {
            let received =
                match sys::receive(self.peers[i].socket.as_fd(), &mut self.receive_buffer) {
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
                    self.peers[i].bye = true;
                    reader.expect_end("Bye")
                }
                Type::Request if header.stream != 0 => {
                    // Answered at once: the stream of the request fails, the connection goes on.
                    let message = "this producer has no request handler";
                    let answer = self.writer.error(header.stream, ERROR_HANDLER, message);
                    sys::try_send(self.peers[i].socket.as_fd(), answer).map(|_| ())
                }
                kind => Err(Error::Protocol(format!("unexpected {kind:?} from a consumer"))),
            });
            let peer = &mut self.peers[i];
            let unknown = released.iter().find(|&&s| peer.held.remove(&s).is_none()).copied();
            let outcome = match (handled, unknown) {
                (Err(error), _) => Err(error.to_string()),
                (Ok(()), Some(sequence)) => {
                    Err(format!("released batch {sequence}, which it does not hold"))
                }
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
        for peer in self.peers.iter_mut().filter(|p| p.receiving()) {
            while peer.held.len() < peer.credits {
                let Some(next) = peer.queue.front() else {
                    break;
                };
                let (message, fd) = match &next.payload {
                    Payload::Memfd(memfd) => (
                        BatchRef { sequence: next.sequence, ..BatchRef::default() },
                        Some(memfd.as_fd()),
                    ),
                    Payload::Ring { metadata_offset, metadata_length, .. } => {
                        let message = BatchRef {
                            sequence: next.sequence,
                            dropped: 0,
                            metadata_offset: *metadata_offset,
                            metadata_length: *metadata_length,
                        };
                        (message, None)
                    }
                };
                let fds: Vec<_> = fd.into_iter().collect();
                match sys::try_send_fds(peer.socket.as_fd(), self.writer.batch(&message), &fds) {
                    Ok(true) => {
                        let next = peer.queue.pop_front().expect("the front");
                        peer.held.insert(next.sequence, next);
                    }
                    Ok(false) => break, // the socket is full: at the next round
                    Err(_) => {
                        peer.gone = true;
                        break;
                    }
                }
            }
            if self.ended && peer.queue.is_empty() && !peer.end_sent && peer.receiving() {
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
