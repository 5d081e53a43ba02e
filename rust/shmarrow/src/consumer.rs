//! The consumer: receives a producer's stream in all three ways a shmarrow producer serves it
//! (the single hand-over, and the stream protocol's sealed and ring modes), as zero-copy
//! `RecordBatch`es whose buffers point into the producer's shared memory.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_buffer::Buffer;
use arrow_data::ArrayData;
use arrow_schema::{ArrowError, Schema, SchemaRef};
use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::net::SocketType;

use crate::error::{Error, Result};
use crate::ipc;
use crate::protocol::{self as proto, BatchRef, Reader, Type, Writer};
use crate::sys::{self, Mapping};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest record batch metadata a producer may point at in the ring.
const MAX_METADATA: u32 = 1 << 20;
/// How long a queue entry may wait for the Schema/End messages it counts (already sent).
const CONTROLS_WAIT: Duration = Duration::from_secs(1);

/// What a consumer asks of the producer, and how long it waits.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Only these columns, in this order (empty: all). Ring mode: the producer projects;
    /// sealed mode and the single hand-over: the consumer selects them, without copying.
    pub columns: Vec<String>,
    /// Lose the oldest batches instead of holding the producer back when this consumer is slow.
    pub lossy: bool,
    /// Start at the oldest batch the producer still retains instead of the next one published.
    pub start_at_oldest: bool,
    /// Batches held at once (0: the producer's limit).
    pub max_in_flight: u32,
    /// How long `connect` retries while nobody listens at the address yet.
    pub connect_timeout: Duration,
    /// How long a blocking read waits for the producer (None: forever).
    pub read_timeout: Option<Duration>,
    /// Blocking reads spin on the queue and the socket for this long before they sleep.
    pub busy_poll: Duration,
    /// The schema the stream must have (the producer refuses this consumer otherwise).
    pub expect_schema: Option<SchemaRef>,
    /// `expect_schema` is a subset: its fields must exist by name with the same type.
    pub schema_subset: bool,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            columns: Vec::new(),
            lossy: false,
            start_at_oldest: false,
            max_in_flight: 0,
            connect_timeout: Duration::ZERO,
            read_timeout: None,
            busy_poll: Duration::ZERO,
            expect_schema: None,
            schema_subset: false,
        }
    }
}

/// How the producer serves this consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One sealed memfd holding the whole stream (a `SOCK_STREAM` producer).
    Handover,
    /// The stream protocol, one sealed memfd per batch.
    Sealed,
    /// The stream protocol, every batch in one shared ring.
    Ring,
}

impl Mode {
    /// The name `shmarrow recv --json` reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Handover => "handover",
            Mode::Sealed => "sealed",
            Mode::Ring => "ring",
        }
    }
}

/// What a non-blocking read found.
#[derive(Debug)]
pub enum Poll {
    /// The next batch.
    Batch(RecordBatch),
    /// Nothing yet: wait until the consumer's fd is readable, then try again.
    Pending,
    /// The stream ended normally.
    End,
}

/// Counters of one consumer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsumerStats {
    /// Batches handed out.
    pub batches: u64,
    /// Batches the producer dropped for this (lossy) consumer.
    pub dropped: u64,
    /// Schema changes seen on the stream.
    pub schema_changes: u64,
    /// Batches released back to the producer.
    pub released: u64,
}

/// The memfd of the single hand-over.
#[derive(Clone, Debug)]
pub struct MemfdInfo {
    /// Its inode number.
    pub inode: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its seals, `F_SEAL_...` names joined by `|`.
    pub seals: String,
}

/// The socket, shared by the consumer and every batch it handed out: a batch dying on any thread
/// tells the producer through it, even after the Consumer is gone.
struct Channel {
    socket: OwnedFd,
    state: Mutex<ChannelState>,
}

#[derive(Default)]
struct ChannelState {
    writer: Writer,
    held: Vec<(u64, bool)>, // (sequence, answers a request): at most the credits, a flat list
    unsent: Vec<u64>,
    deferring: bool,
    flush_at: usize,
    released: u64,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        // A panic elsewhere leaves the lists consistent: every change is one push or removal.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that a batch arrived. A producer may not send a sequence this consumer still holds
    /// (its Release would be ambiguous), nor more batches than the credits: each would cost
    /// memory, and in sealed mode a mapping and an fd, without bound.
    /// The published stream and the answers to requests have credits of their own.
    fn hold(&self, sequence: u64, response: bool, credits: u32) -> Result<()> {
        let mut state = self.lock();
        if state.held.iter().any(|&(s, _)| s == sequence) {
            return Err(Error::Protocol(format!(
                "batch {sequence} arrived while this consumer still holds batch {sequence}"
            )));
        }
        let count = state.held.iter().filter(|&&(_, r)| r == response).count();
        if count >= credits as usize {
            let what = if response { "answers to requests" } else { "the published stream" };
            return Err(Error::Protocol(format!(
                "batch {sequence} is beyond this consumer's {credits} credits (it holds {count} of {what})"
            )));
        }
        state.held.push((sequence, response));
        Ok(())
    }

    /// Tells the producer at once, or, while deferring, with the next `flush_at` releases or when
    /// the consumer catches up. A full socket keeps them for the next flush.
    fn release(&self, sequence: u64) {
        let mut state = self.lock();
        if let Some(i) = state.held.iter().position(|&(s, _)| s == sequence) {
            state.held.swap_remove(i);
        }
        state.unsent.push(sequence);
        if !state.deferring || state.unsent.len() >= state.flush_at {
            self.flush(&mut state);
        }
    }

    /// Deferring is for a consumer that is behind: one Release then answers several batches.
    fn set_deferring(&self, deferring: bool, flush_at: usize) {
        let mut state = self.lock();
        state.deferring = deferring;
        state.flush_at = flush_at.max(1);
        if !deferring {
            self.flush(&mut state);
        }
    }

    fn flush(&self, state: &mut ChannelState) {
        while !state.unsent.is_empty() {
            let start = state.unsent.len().saturating_sub(proto::MAX_RUN);
            let chunk = state.unsent[start..].to_vec();
            let message = state.writer.release(&chunk);
            match sys::try_send(self.socket.as_fd(), message) {
                Ok(false) => return, // full: again at the next flush
                // Sent, or the producer is gone (then there is nobody left to tell).
                Ok(true) | Err(_) => {
                    state.released += chunk.len() as u64;
                    state.unsent.truncate(start);
                }
            }
        }
    }

    /// Sends a message built by `build`; an error if the socket is full or broken.
    fn send(&self, build: impl FnOnce(&mut Writer) -> &[u8]) -> Result<()> {
        let mut state = self.lock();
        let message = build(&mut state.writer);
        match sys::try_send(self.socket.as_fd(), message)? {
            true => Ok(()),
            false => Err(Error::Producer("the socket to the producer is full".into())),
        }
    }
}

/// The owner of one received batch's memory, as arrow-buffer sees it: when the last buffer of
/// the batch dies, on whatever thread, the batch is released to the producer.
struct Lease {
    channel: Arc<Channel>,
    sequence: u64,
    _mapping: Arc<Mapping>, // keeps the bytes mapped while any buffer lives
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.channel.release(self.sequence);
    }
}

/// All of `mapping` as one buffer whose owner is `owner`.
fn region_buffer<T: arrow_buffer::alloc::Allocation + 'static>(
    mapping: &Mapping,
    owner: T,
) -> Buffer {
    // SAFETY: the mapping stays mapped while `owner` lives (it holds the Arc<Mapping>), and is
    // read-only, so nothing writes through these bytes.
    unsafe { Buffer::from_custom_allocation(mapping.ptr(), mapping.len(), Arc::new(owner)) }
}

enum Event {
    Batch(RecordBatch, Arc<Mapping>),
    Schema(SchemaRef),
    End,
    /// A request's answer failed (the producer's Error on its stream).
    Failed(Error),
}

/// The answer to one request, as it arrives.
struct ResponseStream {
    schema: Option<SchemaRef>,
    events: VecDeque<Event>,
    abandoned: bool, // its Response was dropped before the end
}

struct Queue {
    offset: usize,
    capacity: u64,
}

/// A consumer of one shmarrow producer. Implements [`RecordBatchReader`]: iterate it for the
/// batches, blocking; or call [`Consumer::try_next`] when the fd ([`AsFd`]) is readable.
///
/// Each batch stays valid, in the producer's memory, for as long as any of its buffers lives,
/// even after the Consumer is dropped; the producer reuses that memory once they are all gone.
pub struct Consumer {
    options: ConsumerOptions,
    mode: Mode,
    channel: Option<Arc<Channel>>,
    handover_fd: Option<OwnedFd>,
    memfd: Option<MemfdInfo>,
    ring: Option<Arc<Mapping>>,
    last_mapping: Option<Arc<Mapping>>,
    schema: SchemaRef,        // what the user sees (projected)
    stream_schema: SchemaRef, // the schema ring batches are read with
    events: VecDeque<Event>,
    controls: VecDeque<Event>, // queue mode: stream-0 Schema/End received, applied at their entry
    responses: HashMap<u32, ResponseStream>, // the answers to requests, by stream id
    next_request: u32,
    fatal: Option<Error>,
    credits: u32,
    batch_runs: bool,
    run: Vec<BatchRef>,
    behind: bool, // the last receive found a message waiting: the consumer is behind
    release_batch: usize,
    queue: Option<Queue>,
    queue_read: u64,
    waiting_announced: Option<u64>,
    metadata: Vec<u8>, // ring mode: the private copy of a batch's metadata
    receive_buffer: Vec<u8>,
    stats: ConsumerStats,
}

impl Consumer {
    /// Connects to a producer at `address` (a socket path, or `@name` in the abstract namespace)
    /// and receives the stream however the producer serves it.
    pub fn connect(address: &str, options: ConsumerOptions) -> Result<Consumer> {
        // A producer of the single hand-over listens on a SOCK_STREAM socket. Connecting to its
        // socket file with the wrong type fails with EPROTOTYPE; abstract names are looked up per
        // socket type, so there it is ECONNREFUSED, as when nobody listens: try both.
        let deadline = Instant::now() + options.connect_timeout;
        let is_abstract = address.starts_with('@');
        loop {
            let error = match sys::connect(address, SocketType::SEQPACKET) {
                Ok(socket) => return Consumer::handshake(address, socket, options),
                Err(Errno::PROTOTYPE) => return Consumer::open_handover(address, None, options),
                Err(Errno::CONNREFUSED) if is_abstract => {
                    match sys::connect(address, SocketType::STREAM) {
                        Ok(socket) => {
                            return Consumer::open_handover(address, Some(socket), options)
                        }
                        Err(_) => Errno::CONNREFUSED,
                    }
                }
                Err(e) => e,
            };
            let nobody_listens = error == Errno::NOENT || error == Errno::CONNREFUSED;
            if !nobody_listens || Instant::now() >= deadline {
                return Err(Error::io(format!("connect('{address}')"), error));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn new(options: ConsumerOptions, mode: Mode, schema: SchemaRef) -> Consumer {
        Consumer {
            options,
            mode,
            channel: None,
            handover_fd: None,
            memfd: None,
            ring: None,
            last_mapping: None,
            stream_schema: schema.clone(),
            schema,
            events: VecDeque::new(),
            controls: VecDeque::new(),
            responses: HashMap::new(),
            next_request: 1,
            fatal: None,
            credits: 0,
            batch_runs: false,
            run: Vec::new(),
            behind: false,
            release_batch: 1,
            queue: None,
            queue_read: 0,
            waiting_announced: None,
            metadata: Vec::new(),
            receive_buffer: Vec::new(),
            stats: ConsumerStats::default(),
        }
    }

    fn open_handover(
        address: &str,
        connected: Option<OwnedFd>,
        options: ConsumerOptions,
    ) -> Result<Consumer> {
        let socket = match connected {
            Some(socket) => socket,
            None => sys::connect(address, SocketType::STREAM)
                .map_err(|e| Error::io(format!("connect('{address}')"), e))?,
        };
        if !sys::wait_readable(socket.as_fd(), Some(HANDSHAKE_TIMEOUT))? {
            return Err(Error::Timeout(format!(
                "producer at '{address}' sent no memfd within {} ms",
                HANDSHAKE_TIMEOUT.as_millis()
            )));
        }
        let mut byte = [0u8; 1];
        let received = sys::receive(socket.as_fd(), &mut byte)?
            .ok_or_else(|| Error::Producer(format!("producer at '{address}' sent nothing")))?;
        if received.bytes == 0 {
            return Err(Error::Producer(format!(
                "producer at '{address}' closed the connection without sending a memfd"
            )));
        }
        let mut fds = received.fds;
        if fds.len() != 1 {
            return Err(Error::Protocol(format!(
                "the hand-over from '{address}' carried {} fds, expected 1",
                fds.len()
            )));
        }
        let fd = fds.pop().expect("one fd");
        let seals = sealed_memfd(fd.as_fd())?;
        let mapping = Arc::new(Mapping::map_read_only(fd.as_fd())?);
        let stream = region_buffer(&mapping, mapping.clone());
        let (schema, batches) = ipc::read_stream(&stream)?;
        if let Some(expected) = &options.expect_schema {
            ipc::check_schema(expected, &schema, options.schema_subset).map_err(Error::Producer)?;
        }
        let mut consumer = Consumer::new(options, Mode::Handover, schema.clone());
        consumer.schema = consumer.project_schema(&schema)?;
        for batch in batches {
            let batch = consumer.project(batch)?;
            consumer.events.push_back(Event::Batch(batch, mapping.clone()));
        }
        consumer.events.push_back(Event::End);
        consumer.memfd = Some(MemfdInfo {
            inode: mapping.inode(),
            bytes: mapping.len() as u64,
            seals: sys::seal_names(seals),
        });
        consumer.last_mapping = Some(mapping);
        consumer.handover_fd = Some(fd);
        Ok(consumer)
    }

    fn handshake(address: &str, socket: OwnedFd, options: ConsumerOptions) -> Result<Consumer> {
        let channel = Arc::new(Channel { socket, state: Mutex::default() });
        let mut flags = 0;
        if options.lossy {
            flags |= proto::HELLO_LOSSY;
        }
        if options.start_at_oldest {
            flags |= proto::HELLO_START_AT_OLDEST;
        }
        if options.schema_subset {
            flags |= proto::HELLO_SCHEMA_SUBSET;
        }
        let required_schema = match &options.expect_schema {
            Some(schema) => ipc::encode_schema(schema)?,
            None => Vec::new(),
        };
        let hello = proto::Hello {
            features: proto::FEATURE_REQUESTS
                | proto::FEATURE_PROJECTION
                | proto::FEATURE_LOSSY
                | proto::FEATURE_BATCH_RUNS
                | proto::FEATURE_QUEUE,
            flags,
            max_in_flight: options.max_in_flight,
            columns: &options.columns,
            required_schema: &required_schema,
        };
        // A producer that refuses this consumer sends why and closes at once, maybe before the
        // Hello arrived: the send may then fail, but the reason is still there to read.
        let hello_sent = channel.send(|w| w.hello(&hello));
        let mut buffer = vec![0u8; proto::MAX_MESSAGE_SIZE];
        let no_answer =
            |hello_sent: Result<()>, what: String| hello_sent.and(Err(Error::Producer(what)));
        if !sys::wait_readable(channel.socket.as_fd(), Some(HANDSHAKE_TIMEOUT))? {
            return no_answer(
                hello_sent,
                format!(
                    "producer at '{address}' did not answer the handshake within {} ms",
                    HANDSHAKE_TIMEOUT.as_millis()
                ),
            );
        }
        let received = match receive_resetting(channel.socket.as_fd(), &mut buffer) {
            Ok(Some(received)) if received.bytes > 0 => received,
            Ok(_) => {
                return no_answer(
                    hello_sent,
                    format!("producer at '{address}' closed the connection during the handshake"),
                )
            }
            Err(e) => return hello_sent.and(Err(e)),
        };
        let mut reader = Reader::new(&buffer[..received.bytes]);
        let header = reader.header()?;
        if header.kind == Type::Error {
            let (_, message) = reader.error()?;
            return Err(Error::Producer(format!("producer at '{address}' refused: {message}")));
        }
        if header.kind != Type::Welcome {
            return Err(Error::Protocol(format!("expected Welcome, got {:?}", header.kind)));
        }
        let welcome = reader.welcome()?;
        if welcome.major != proto::MAJOR_VERSION {
            return Err(Error::Producer(format!(
                "producer speaks protocol {}.{}; this consumer speaks {}.{} (major versions must match)",
                welcome.major,
                welcome.minor,
                proto::MAJOR_VERSION,
                proto::MINOR_VERSION
            )));
        }
        let schema = ipc::decode_schema(&welcome.schema)?;
        if let (Some(expected), true) = (&options.expect_schema, options.columns.is_empty()) {
            ipc::check_schema(expected, &schema, options.schema_subset).map_err(Error::Producer)?;
        }
        let mode = if welcome.ring_mode { Mode::Ring } else { Mode::Sealed };
        let mut consumer = Consumer::new(options, mode, schema);
        consumer.receive_buffer = buffer;
        consumer.credits = welcome.max_in_flight;
        consumer.batch_runs = welcome.minor >= 1
            && welcome.features & proto::FEATURE_BATCH_RUNS != 0
            && welcome.ring_mode;
        // Bounded by what one Release message carries, whatever credits the producer grants.
        consumer.release_batch = (welcome.max_in_flight as usize / 4).clamp(1, proto::MAX_RUN);
        consumer.channel = Some(channel);
        let mut fds = received.fds;
        if !welcome.ring_mode {
            if !fds.is_empty() {
                return Err(Error::Protocol("sealed Welcome with an fd".into()));
            }
            return Ok(consumer);
        }
        ipc::check_no_dictionaries(&consumer.stream_schema)?;
        if fds.len() != 1 {
            return Err(Error::Protocol(format!(
                "ring Welcome carries {} fds, expected 1",
                fds.len()
            )));
        }
        let ring_fd = fds.pop().expect("one fd");
        let seals = sys::seals(ring_fd.as_fd())?;
        let no_resize = SealFlags::SHRINK | SealFlags::GROW;
        if !seals.contains(no_resize)
            || !seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE)
        {
            return Err(Error::Protocol(format!(
                "ring memfd fd {} lacks seals: has {}, needs F_SEAL_SHRINK|F_SEAL_GROW and a write seal",
                ring_fd.as_raw_fd(),
                sys::seal_names(seals)
            )));
        }
        let ring = Arc::new(Mapping::map_read_only(ring_fd.as_fd())?);
        if welcome.minor >= 1
            && welcome.features & proto::FEATURE_QUEUE != 0
            && welcome.queue_capacity > 0
        {
            let ring_size = ring.len() as u64;
            let capacity = u64::from(welcome.queue_capacity);
            let bytes = proto::QUEUE_HEADER_SIZE + capacity * proto::QUEUE_ENTRY_SIZE;
            let offset = welcome.queue_offset;
            if welcome.queue_capacity > proto::MAX_QUEUE_CAPACITY
                || offset % 64 != 0
                || offset > ring_size
                || bytes > ring_size - offset
            {
                return Err(Error::Protocol(format!(
                    "queue of {capacity} entries at offset {offset} does not fit the \
                     {ring_size}-byte ring (or is not 64-byte aligned)"
                )));
            }
            consumer.queue = Some(Queue { offset: offset as usize, capacity });
        }
        consumer.ring = Some(ring);
        Ok(consumer)
    }

    /// The schema of the batches read next (after a schema change, the new one).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// How the producer serves this consumer.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Counters so far.
    pub fn stats(&self) -> ConsumerStats {
        let mut stats = self.stats;
        stats.released = self.channel.as_ref().map_or(0, |c| c.lock().released);
        stats
    }

    /// The single hand-over's memfd (None in the stream protocol's modes).
    pub fn memfd(&self) -> Option<&MemfdInfo> {
        self.memfd.as_ref()
    }

    /// Whether every buffer of `batch` (one this consumer returned last, or any in ring mode)
    /// lies inside the producer's shared memory: proof that it was not copied.
    pub fn in_shared_memory(&self, batch: &RecordBatch) -> bool {
        let Some(mapping) = self.ring.as_ref().or(self.last_mapping.as_ref()) else {
            return false;
        };
        fn inside(mapping: &Mapping, data: &ArrayData) -> bool {
            let nulls = data.nulls().map(|n| n.buffer());
            data.buffers()
                .iter()
                .chain(nulls)
                .all(|b| b.is_empty() || mapping.contains(b.as_ptr(), b.len()))
                && data.child_data().iter().all(|c| inside(mapping, c))
        }
        batch.columns().iter().all(|column| inside(mapping, &column.to_data()))
    }

    /// The next batch, waiting for it up to the read timeout; None at the end of the stream.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let deadline = self.options.read_timeout.map(|t| Instant::now() + t);
        let spin_until = Instant::now() + self.options.busy_poll;
        let mut round = 0u64;
        loop {
            if let Some(decided) = self.take_queued() {
                self.settle_releases();
                return Ok(decided);
            }
            self.check_fatal()?;
            if self.drain_queue_or_fail()? {
                continue;
            }
            let spin = Instant::now() < spin_until;
            round += 1;
            // A spinning consumer with a queue looks at the ring; at the socket (the producer
            // going away) every 64th round.
            if spin && self.queue.is_some() && !round.is_multiple_of(64) {
                continue;
            }
            let wait = if spin {
                Some(Duration::ZERO)
            } else {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            let got = self.pump(wait)?;
            if !spin && !got && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(format!(
                    "no message from the producer within {} ms",
                    self.options.read_timeout.unwrap_or_default().as_millis()
                )));
            }
        }
    }

    /// Sends `request` to the producer's request handler and returns its answer, a stream of
    /// its own (the published stream goes on meanwhile). Not in the single hand-over.
    pub fn request(&mut self, request: &[u8]) -> Result<Response<'_>> {
        let Some(channel) = self.channel.clone() else {
            return Err(Error::Producer("the single hand-over has no requests".into()));
        };
        let stream = self.next_request;
        self.next_request = self
            .next_request
            .checked_add(1)
            .ok_or_else(|| Error::Producer("out of request ids".into()))?;
        let response = ResponseStream { schema: None, events: VecDeque::new(), abandoned: false };
        self.responses.insert(stream, response);
        channel.send(|w| w.request(stream, request))?;
        Ok(Response { consumer: self, stream })
    }

    /// The next event of a request's answer: a batch, None at its end.
    fn next_response(&mut self, stream: u32) -> Result<Option<RecordBatch>> {
        let deadline = self.options.read_timeout.map(|t| Instant::now() + t);
        loop {
            let response = self.responses.get_mut(&stream).expect("a request in flight");
            match response.events.pop_front() {
                Some(Event::Batch(batch, mapping)) => {
                    self.last_mapping = Some(mapping);
                    self.settle_releases();
                    return Ok(Some(batch));
                }
                Some(Event::End) => {
                    response.events.push_front(Event::End); // the end is final
                    return Ok(None);
                }
                Some(Event::Failed(error)) => {
                    response.events.push_front(Event::Failed(error.clone()));
                    return Err(error);
                }
                Some(Event::Schema(_)) | None => {}
            }
            self.check_fatal()?;
            let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let got = self.drain_queue_or_fail()? || self.pump(wait)?;
            if !got && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(format!("no answer to request {stream} in time")));
            }
        }
    }

    /// The next batch if one is there, without blocking. On `Pending`, poll the fd
    /// ([`AsFd`]) for readability and call again.
    pub fn try_next(&mut self) -> Result<Poll> {
        loop {
            if let Some(decided) = self.take_queued() {
                self.settle_releases();
                return Ok(decided.map_or(Poll::End, Poll::Batch));
            }
            self.check_fatal()?;
            if self.drain_queue_or_fail()? {
                continue;
            }
            if self.pump(Some(Duration::ZERO))? {
                continue;
            }
            // The fd becomes readable with the producer's Wake once the queue has something.
            if self.queue.is_some() && !self.announce_waiting()? {
                continue;
            }
            return Ok(Poll::Pending);
        }
    }

    fn check_fatal(&self) -> Result<()> {
        match &self.fatal {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, error: Error) -> Result<T> {
        self.fatal = Some(error.clone());
        Err(error)
    }

    /// Takes the next event without receiving: Some(batch), Some(None) at the end, None when
    /// nothing decisive is queued (schema changes are applied on the way).
    fn take_queued(&mut self) -> Option<Option<RecordBatch>> {
        loop {
            match self.events.front()? {
                Event::End => return Some(None), // stays queued: the end is final
                Event::Schema(_) => {
                    let Some(Event::Schema(schema)) = self.events.pop_front() else {
                        unreachable!()
                    };
                    // Projected by name where the producer did not (sealed mode).
                    self.schema = self.project_schema(&schema).unwrap_or(schema);
                    self.stats.schema_changes += 1;
                }
                Event::Batch(..) | Event::Failed(_) => {
                    let Some(Event::Batch(batch, mapping)) = self.events.pop_front() else {
                        unreachable!("only answers to requests fail alone")
                    };
                    self.last_mapping = Some(mapping);
                    self.stats.batches += 1;
                    return Some(Some(batch));
                }
            }
        }
    }

    fn has_queued_batch(&self) -> bool {
        let is_batch = |e: &Event| matches!(e, Event::Batch(..));
        self.events.iter().any(is_batch)
            || self.responses.values().any(|r| r.events.iter().any(is_batch))
    }

    /// After a batch was taken: releases are deferred while more batches wait to be read here
    /// (looking for the next one first if the consumer was behind), and sent otherwise.
    fn settle_releases(&mut self) {
        let Some(channel) = self.channel.clone() else {
            return;
        };
        if self.fatal.is_none() && !self.has_queued_batch() && (self.behind || self.queue.is_some())
        {
            let prefetched = if self.queue.is_some() {
                self.drain_queue().map(|_| ())
            } else {
                self.pump(Some(Duration::ZERO)).map(|_| ())
            };
            if let Err(error) = prefetched {
                self.fatal = Some(error);
            }
        }
        channel.set_deferring(self.has_queued_batch(), self.release_batch);
    }

    /// One datagram without blocking. A producer that closes with datagrams of ours unread (it
    /// died, or refused us) resets the connection: ECONNRESET comes once, ahead of the datagrams
    /// still queued for us.
    fn receive(&mut self) -> Result<Option<sys::Received>> {
        let channel = self.channel.as_ref().expect("stream protocol");
        receive_resetting(channel.socket.as_fd(), &mut self.receive_buffer)
    }

    /// Receives and handles one message, waiting up to `wait` (None: forever); false if none
    /// arrived. A broken message or a closed connection becomes the consumer's fatal error.
    fn pump(&mut self, wait: Option<Duration>) -> Result<bool> {
        match self.pump_once(wait) {
            Ok(got) => Ok(got),
            // A message refused on receipt (MSG_CTRUNC, too long) or a failed recvmsg: the
            // stream cannot go on.
            Err(error) => self.fail(error),
        }
    }

    fn pump_once(&mut self, wait: Option<Duration>) -> Result<bool> {
        let channel = self.channel.clone().expect("stream protocol");
        let mut received = self.receive()?;
        self.behind = received.is_some();
        if received.is_none() {
            channel.set_deferring(false, self.release_batch); // caught up: the producer hears of all
            if wait == Some(Duration::ZERO) {
                return Ok(false);
            }
            if self.queue.is_some() && !self.announce_waiting()? {
                return Ok(true);
            }
            if !sys::wait_readable(channel.socket.as_fd(), wait)? {
                return Ok(false);
            }
            received = self.receive()?;
        }
        let Some(received) = received else {
            return Ok(false);
        };
        if received.bytes == 0 {
            self.fatal = Some(Error::Producer(
                "producer closed the connection without ending the stream (did it die?)".into(),
            ));
            return Ok(true);
        }
        if let Err(error) = self.handle_received(received) {
            self.fatal = Some(error);
        }
        Ok(true)
    }

    fn handle_received(&mut self, received: sys::Received) -> Result<()> {
        let buffer = std::mem::take(&mut self.receive_buffer);
        let handled = self.handle(&buffer[..received.bytes], received.fds);
        self.receive_buffer = buffer;
        handled
    }

    fn handle(&mut self, data: &[u8], fds: Vec<OwnedFd>) -> Result<()> {
        let mut reader = Reader::new(data);
        let header = reader.header()?;
        let stream = header.stream;
        let handled = self.handle_message(header, reader, fds);
        // What arrives for an answer nobody reads any more is let go at once (its batches are
        // released); once it ended, nothing more can come for it.
        if let Some(response) = self.responses.get_mut(&stream).filter(|r| r.abandoned) {
            let ended = response.events.iter().any(|e| matches!(e, Event::End | Event::Failed(_)));
            response.events.clear();
            if ended {
                self.responses.remove(&stream);
            }
        }
        handled
    }

    fn handle_message(
        &mut self,
        header: proto::Header,
        mut reader: Reader<'_>,
        mut fds: Vec<OwnedFd>,
    ) -> Result<()> {
        if header.kind != Type::Batch && !fds.is_empty() {
            return Err(Error::Protocol(format!("{:?} carried {} fds", header.kind, fds.len())));
        }
        let stream = header.stream;
        if stream != 0 && !self.responses.contains_key(&stream) {
            return Err(Error::Protocol(format!("{:?} for unknown stream {stream}", header.kind)));
        }
        match header.kind {
            Type::Batch => {
                let batch = reader.batch()?;
                self.stats.dropped += batch.dropped;
                self.materialize(&batch, stream, &mut fds)
            }
            Type::Batches => {
                if !self.batch_runs {
                    return Err(Error::Protocol(
                        "Batches message, but batch runs were not agreed".into(),
                    ));
                }
                let mut run = std::mem::take(&mut self.run);
                reader.batches(&mut run)?;
                let mut result = Ok(());
                for (i, batch) in run.iter().enumerate() {
                    self.stats.dropped += batch.dropped;
                    if let Err(error) = self.materialize(batch, stream, &mut fds) {
                        // The producer may reuse what this consumer will never read.
                        let channel = self.channel.as_ref().expect("stream protocol");
                        run[i + 1..].iter().for_each(|later| channel.release(later.sequence));
                        result = Err(error);
                        break;
                    }
                }
                self.run = run;
                result
            }
            Type::Schema => {
                let schema = ipc::decode_schema(reader.schema()?)?;
                if self.mode == Mode::Ring {
                    ipc::check_no_dictionaries(&schema)?;
                }
                if let Some(response) = self.responses.get_mut(&stream) {
                    response.schema = Some(schema);
                } else if self.queue.is_some() {
                    self.controls.push_back(Event::Schema(schema)); // applies at its entry
                } else {
                    self.stream_schema = schema.clone();
                    self.events.push_back(Event::Schema(schema));
                }
                Ok(())
            }
            Type::End => {
                reader.expect_end("End")?;
                let queue = match self.responses.get_mut(&stream) {
                    Some(response) => &mut response.events,
                    None if self.queue.is_some() => &mut self.controls,
                    None => &mut self.events,
                };
                queue.push_back(Event::End);
                Ok(())
            }
            Type::Wake => {
                if self.queue.is_none() {
                    return Err(Error::Protocol("Wake without a queue".into()));
                }
                reader.expect_end("Wake") // the queue is read by the caller's next look at it
            }
            Type::Error => {
                let (_, message) = reader.error()?;
                let error = Error::Producer(format!("producer: {message}"));
                match self.responses.get_mut(&stream) {
                    Some(response) => response.events.push_back(Event::Failed(error)), // that request
                    None => return Err(error),                                         // fatal
                }
                Ok(())
            }
            kind => Err(Error::Protocol(format!("unexpected {kind:?} from a producer"))),
        }
    }

    /// Appends the batches one Batch (or queue entry) describes to the events of `stream`.
    fn materialize(
        &mut self,
        message: &BatchRef,
        stream: u32,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<()> {
        let channel = self.channel.clone().expect("stream protocol");
        let sequence = message.sequence;
        let response = stream != 0;
        if self.mode == Mode::Sealed {
            if fds.len() != 1 {
                return Err(Error::Protocol(format!(
                    "sealed Batch {sequence} carries {} fds, expected 1",
                    fds.len()
                )));
            }
            let fd = fds.pop().expect("one fd");
            channel.hold(sequence, response, self.credits)?;
            let mapping =
                match sealed_memfd(fd.as_fd()).and_then(|_| Mapping::map_read_only(fd.as_fd())) {
                    Ok(mapping) => Arc::new(mapping),
                    Err(error) => {
                        channel.release(sequence); // the producer may reuse it
                        return Err(error.within(format!("batch {sequence}")));
                    }
                };
            let size = mapping.len();
            let lease = Lease { channel, sequence, _mapping: mapping.clone() };
            let ipc_stream = region_buffer(&mapping, lease);
            let (_, batches) = ipc::read_stream(&ipc_stream).map_err(|error| {
                error.within(format!("batch {sequence} (a sealed memfd of {size} bytes)"))
            })?;
            for batch in batches {
                // Only the published stream is projected.
                let batch = if response { batch } else { self.project(batch)? };
                self.events_of(stream).push_back(Event::Batch(batch, mapping.clone()));
            }
            return Ok(());
        }
        if !fds.is_empty() {
            return Err(Error::Protocol("ring Batch carries an fd".into()));
        }
        channel.hold(sequence, response, self.credits)?;
        let ring = self.ring.clone().expect("ring mode");
        // Made before the checks: a batch refused is released all the same.
        let body = region_buffer(&ring, Lease { channel, sequence, _mapping: ring.clone() });
        let ring_size = ring.len() as u64;
        let (offset, length) = (message.metadata_offset, message.metadata_length);
        if length == 0
            || length > MAX_METADATA
            || offset > ring_size
            || u64::from(length) > ring_size - offset
        {
            return Err(Error::Protocol(format!(
                "batch {sequence} metadata at [{offset}, +{length}) is outside the {ring_size}-byte ring"
            )));
        }
        // Copied out of the ring before it is parsed and checked, so the producer cannot change
        // it between the check and the use.
        self.metadata.clear();
        self.metadata.extend_from_slice(
            &ring.bytes()[offset as usize..(offset + u64::from(length)) as usize],
        );
        let schema = match self.responses.get(&stream) {
            Some(answer) => answer.schema.clone().ok_or_else(|| {
                Error::Protocol(format!(
                    "batch {sequence} answers request {stream} before its Schema"
                ))
            })?,
            None => self.stream_schema.clone(),
        };
        let batch = ipc::read_ring_batch(&self.metadata, &body, &schema).map_err(|error| {
            Error::Protocol(format!(
                "batch {sequence} (metadata at [{offset}, +{length}) of the {ring_size}-byte ring): {error}"
            ))
        })?;
        self.events_of(stream).push_back(Event::Batch(batch, ring));
        Ok(())
    }

    fn events_of(&mut self, stream: u32) -> &mut VecDeque<Event> {
        match self.responses.get_mut(&stream) {
            Some(response) => &mut response.events,
            None => &mut self.events,
        }
    }

    fn projection(&self, schema: &Schema) -> Result<Option<Vec<usize>>> {
        if self.options.columns.is_empty() {
            return Ok(None);
        }
        let indices = self
            .options
            .columns
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| {
                    Error::Producer(format!(
                        "the stream has no column '{name}' (it has {})",
                        field_names(schema)
                    ))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Some(indices))
    }

    fn project_schema(&self, schema: &SchemaRef) -> Result<SchemaRef> {
        match self.projection(schema)? {
            None => Ok(schema.clone()),
            Some(indices) => schema
                .project(&indices)
                .map(Arc::new)
                .map_err(|e| Error::arrow("projecting the schema", e)),
        }
    }

    /// Sealed mode and the hand-over: the consumer selects the columns itself (no copy).
    fn project(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self.projection(&batch.schema())? {
            None => Ok(batch),
            Some(indices) => {
                batch.project(&indices).map_err(|e| Error::arrow("projecting a batch", e))
            }
        }
    }

    fn queue_count(&self) -> u64 {
        let (ring, queue) =
            (self.ring.as_ref().expect("ring"), self.queue.as_ref().expect("queue"));
        // SAFETY: the count is 8 bytes at a 64-byte aligned offset inside the mapping (checked in
        // the handshake); the producer stores it atomically with release ordering.
        let count = unsafe { &*ring.ptr().as_ptr().add(queue.offset).cast::<AtomicU64>() };
        count.load(Ordering::Acquire)
    }

    /// Entries the producer wrote and this consumer has not read (an error if the count is
    /// impossible).
    fn queue_unread(&self) -> Result<u64> {
        let written = self.queue_count();
        let capacity = self.queue.as_ref().expect("queue").capacity;
        if written < self.queue_read || written - self.queue_read > capacity {
            return Err(Error::Protocol(format!(
                "the queue counts {written} entries written, but this consumer read {} of a queue of {capacity}",
                self.queue_read
            )));
        }
        Ok(written - self.queue_read)
    }

    fn drain_queue_or_fail(&mut self) -> Result<bool> {
        self.drain_queue().or_else(|error| self.fail(error))
    }

    /// Takes every unread entry of the queue into the events; false if there was none.
    fn drain_queue(&mut self) -> Result<bool> {
        let Some(queue) = &self.queue else {
            return Ok(false);
        };
        let (offset, capacity) = (queue.offset, queue.capacity);
        let unread = self.queue_unread()?;
        let ring = self.ring.clone().expect("ring mode");
        for _ in 0..unread {
            // Copied out first: the producer can write the ring, the consumer checks its copy.
            let slot = offset
                + (proto::QUEUE_HEADER_SIZE
                    + (self.queue_read % capacity) * proto::QUEUE_ENTRY_SIZE)
                    as usize;
            let entry: [u8; proto::QUEUE_ENTRY_SIZE as usize] = ring.bytes()
                [slot..slot + proto::QUEUE_ENTRY_SIZE as usize]
                .try_into()
                .expect("40 bytes");
            self.queue_read += 1;
            let mut reader = Reader::new(&entry);
            let kind = reader.u32("kind")?;
            let metadata_length = reader.u32("metadata length")?;
            let message = BatchRef {
                sequence: reader.u64("sequence")?,
                dropped: reader.u64("dropped")?,
                metadata_offset: reader.u64("metadata offset")?,
                metadata_length,
            };
            self.apply_controls(reader.u32("controls before")?)?;
            match kind {
                proto::ENTRY_CONTROLS => continue,
                proto::ENTRY_BATCH => {}
                _ => {
                    return Err(Error::Protocol(format!(
                        "queue entry {} has kind {kind}",
                        self.queue_read - 1
                    )))
                }
            }
            self.stats.dropped += message.dropped;
            self.materialize(&message, 0, &mut Vec::new())?;
        }
        Ok(unread > 0)
    }

    /// Applies the next `count` Schema/End messages, which the producer sent on the socket before
    /// the entry that counts them; a producer that got the order wrong gets a moment, not a hang.
    fn apply_controls(&mut self, count: u32) -> Result<()> {
        let deadline = Instant::now() + CONTROLS_WAIT;
        let channel = self.channel.clone().expect("stream protocol");
        while self.controls.len() < count as usize {
            self.check_fatal()?;
            let mut received = self.receive()?;
            if received.is_none()
                && sys::wait_readable(
                    channel.socket.as_fd(),
                    Some(deadline.saturating_duration_since(Instant::now())),
                )?
            {
                received = self.receive()?;
            }
            match received {
                Some(received) if received.bytes > 0 => self.handle_received(received)?,
                _ => {
                    return Err(Error::Protocol(format!(
                    "a queue entry counts {count} control messages before it, but only {} arrived",
                    self.controls.len()
                )))
                }
            }
        }
        for _ in 0..count {
            let control = self.controls.pop_front().expect("counted");
            if let Event::Schema(schema) = &control {
                self.stream_schema = schema.clone();
            }
            self.events.push_back(control);
        }
        Ok(())
    }

    /// Before sleeping on the socket: tells the producer how far the queue was read, so that it
    /// sends a Wake with the next entry. False if entries arrived meanwhile (do not sleep).
    fn announce_waiting(&mut self) -> Result<bool> {
        if self.waiting_announced != Some(self.queue_read) {
            let read = self.queue_read;
            // A producer gone (or not reading) cannot be told; the socket says so when read.
            let _ = self.channel.as_ref().expect("stream protocol").send(|w| w.waiting(read));
            self.waiting_announced = Some(read);
        }
        Ok(self.queue_unread()? == 0)
    }
}

/// A memfd sealed as the single hand-over and sealed mode require (docs/protocol.md).
fn sealed_memfd(fd: BorrowedFd<'_>) -> Result<SealFlags> {
    let seals = sys::seals(fd)?;
    if !seals.contains(sys::SEALS_HANDOVER) {
        return Err(Error::Protocol(format!(
            "memfd fd {} lacks seals: has {}, needs F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE|F_SEAL_SEAL",
            fd.as_raw_fd(),
            sys::seal_names(seals)
        )));
    }
    Ok(seals)
}

fn receive_resetting(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> Result<Option<sys::Received>> {
    match sys::receive(fd, buffer) {
        Err(error) if error.errno() == Some(Errno::CONNRESET.raw_os_error()) => {
            sys::receive(fd, buffer)
        }
        other => other,
    }
}

fn field_names(schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

impl Iterator for Consumer {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().map_err(ArrowError::from).transpose()
    }
}

impl RecordBatchReader for Consumer {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl AsFd for Consumer {
    /// The socket to the producer (readable when a message arrives); for the single hand-over,
    /// the memfd (always readable: the whole stream is there).
    fn as_fd(&self) -> BorrowedFd<'_> {
        match (&self.channel, &self.handover_fd) {
            (Some(channel), _) => channel.socket.as_fd(),
            (None, Some(fd)) => fd.as_fd(),
            (None, None) => unreachable!("a consumer has a socket or a hand-over memfd"),
        }
    }
}

/// The answer to one request ([`Consumer::request`]): its batches, then its end; or the
/// producer's error for it.
pub struct Response<'a> {
    consumer: &'a mut Consumer,
    stream: u32,
}

impl Response<'_> {
    /// The answer's schema, once it arrived (it comes before the first batch).
    pub fn schema(&mut self) -> Result<SchemaRef> {
        loop {
            let response = &self.consumer.responses[&self.stream];
            if let Some(schema) = &response.schema {
                return Ok(schema.clone());
            }
            if let Some(Event::Failed(error)) = response.events.front() {
                return Err(error.clone());
            }
            if !response.events.is_empty() {
                return Ok(Arc::new(Schema::empty())); // ended without a schema
            }
            self.consumer.check_fatal()?;
            if !self.consumer.pump(self.consumer.options.read_timeout)? {
                return Err(Error::Timeout(format!(
                    "no answer to request {} in time",
                    self.stream
                )));
            }
        }
    }

    /// The next batch of the answer; None at its end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.consumer.next_response(self.stream)
    }

    /// [`Consumer::in_shared_memory`] for a batch of the answer.
    pub fn in_shared_memory(&self, batch: &RecordBatch) -> bool {
        self.consumer.in_shared_memory(batch)
    }
}

impl Drop for Response<'_> {
    fn drop(&mut self) {
        // What is left of the answer is let go (its batches release themselves); what still
        // arrives for it is let go as it comes, until its end.
        let responses = &mut self.consumer.responses;
        let response = responses.get_mut(&self.stream).expect("a request in flight");
        let ended = response.events.iter().any(|e| matches!(e, Event::End | Event::Failed(_)));
        if ended {
            responses.remove(&self.stream);
        } else {
            response.events.clear();
            response.abandoned = true;
        }
    }
}

impl AsRawFd for Consumer {
    /// The fd of [`AsFd`] (for APIs such as tokio's `AsyncFd` that take a raw fd).
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(channel) = &self.channel {
            channel.set_deferring(false, 1); // batches still alive release themselves one by one
                                             // The producer stops sending, and keeps only what live batches hold until released.
            let _ = channel.send(|w| w.bye());
        }
    }
}

#[cfg(test)]
mod tests {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    use super::*;

    #[test]
    fn credits_and_held_sequences_are_checked_per_stream_class() {
        let (ours, producer) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .unwrap();
        let channel = Channel { socket: ours, state: Mutex::default() };
        channel.hold(1, false, 2).unwrap();
        let again = channel.hold(1, false, 2).unwrap_err().to_string();
        assert!(again.contains("arrived while this consumer still holds batch 1"), "{again}");
        channel.hold(2, false, 2).unwrap();
        let beyond = channel.hold(3, false, 2).unwrap_err().to_string();
        assert!(
            beyond
                .contains("beyond this consumer's 2 credits (it holds 2 of the published stream)"),
            "{beyond}"
        );
        channel.hold(3, true, 2).unwrap(); // answers to requests have credits of their own
        channel.release(1);
        channel.hold(4, false, 2).unwrap();
        let mut buffer = [0u8; 64];
        let received = sys::receive(producer.as_fd(), &mut buffer).unwrap().unwrap();
        let mut reader = Reader::new(&buffer[..received.bytes]);
        assert_eq!(reader.header().unwrap().kind, Type::Release);
        assert_eq!((reader.u32("count").unwrap(), reader.u64("sequence").unwrap()), (1, 1));
    }
}
