//! The stream protocol's messages (docs/protocol.md, "Stream protocol, version 1.1").

use crate::error::{Error, Result};

pub(crate) const MAJOR_VERSION: u16 = 1;
pub(crate) const MINOR_VERSION: u16 = 1;
const MAGIC: u32 = 0x414D_4853; // "SHMA" read as a little-endian u32
pub(crate) const HEADER_SIZE: usize = 16;
/// Largest datagram either side sends or accepts.
pub(crate) const MAX_MESSAGE_SIZE: usize = 256 * 1024;
/// Most batches in one Batches message, and sequences in one Release.
pub(crate) const MAX_RUN: usize = 4096;

pub(crate) const HELLO_LOSSY: u32 = 1 << 0;
pub(crate) const HELLO_START_AT_OLDEST: u32 = 1 << 1;
pub(crate) const HELLO_SCHEMA_SUBSET: u32 = 1 << 2;

pub(crate) const FEATURE_REQUESTS: u32 = 1 << 0;
pub(crate) const FEATURE_PROJECTION: u32 = 1 << 1;
pub(crate) const FEATURE_LOSSY: u32 = 1 << 2;
pub(crate) const FEATURE_BATCH_RUNS: u32 = 1 << 3;
pub(crate) const FEATURE_QUEUE: u32 = 1 << 4;

pub(crate) const QUEUE_HEADER_SIZE: u64 = 64;
pub(crate) const QUEUE_ENTRY_SIZE: u64 = 40;
pub(crate) const MAX_QUEUE_CAPACITY: u32 = 1 << 20;
pub(crate) const ENTRY_BATCH: u32 = 1;
pub(crate) const ENTRY_CONTROLS: u32 = 2;

/// Message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Type {
    Hello = 1,
    Welcome = 2,
    Batch = 3,
    Release = 4,
    Schema = 5,
    End = 6,
    Error = 7,
    Request = 8,
    Bye = 9,
    Batches = 10,
    Wake = 11,
    Waiting = 12,
}

impl Type {
    fn from_u16(value: u16) -> Option<Type> {
        const ALL: [Type; 12] = [
            Type::Hello,
            Type::Welcome,
            Type::Batch,
            Type::Release,
            Type::Schema,
            Type::End,
            Type::Error,
            Type::Request,
            Type::Bye,
            Type::Batches,
            Type::Wake,
            Type::Waiting,
        ];
        ALL.into_iter().find(|t| *t as u16 == value)
    }
}

pub(crate) struct Header {
    pub(crate) kind: Type,
    pub(crate) stream: u32,
}

pub(crate) struct Hello<'a> {
    pub(crate) features: u32,
    pub(crate) flags: u32,
    pub(crate) max_in_flight: u32,
    pub(crate) columns: &'a [String],
    pub(crate) required_schema: &'a [u8], // an encapsulated IPC Schema message, or empty
}

pub(crate) struct Welcome {
    pub(crate) major: u16,
    pub(crate) minor: u16,
    pub(crate) features: u32,
    pub(crate) ring_mode: bool,
    pub(crate) consumer_id: u32,
    pub(crate) ring_size: u64,
    pub(crate) max_consumers: u32,
    pub(crate) max_in_flight: u32,
    pub(crate) schema: Vec<u8>,
    pub(crate) queue_offset: u64,
    pub(crate) queue_capacity: u32,
}

/// A Hello as a producer reads it.
#[derive(Default)]
pub(crate) struct ReceivedHello {
    pub(crate) major: u16,
    pub(crate) minor: u16,
    pub(crate) features: u32,
    pub(crate) flags: u32,
    pub(crate) max_in_flight: u32,
    pub(crate) columns: Vec<String>,
    pub(crate) required_schema: Vec<u8>,
}

/// Where one batch is (a Batch message, an entry of a Batches message, or a queue entry).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchRef {
    pub(crate) sequence: u64,
    pub(crate) dropped: u64,
    pub(crate) metadata_offset: u64,
    pub(crate) metadata_length: u32,
}

/// Builds one message.
#[derive(Default)]
pub(crate) struct Writer {
    buffer: Vec<u8>,
}

impl Writer {
    fn start(&mut self, kind: Type, stream: u32) -> &mut Self {
        self.buffer.clear();
        self.u32(MAGIC).u16(kind as u16).u16(0).u32(stream).u32(0)
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.buffer.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.buffer.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.buffer.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u32(bytes.len() as u32);
        self.buffer.extend_from_slice(bytes);
        self
    }
    fn finish(&mut self) -> &[u8] {
        let payload = (self.buffer.len() - HEADER_SIZE) as u32;
        self.buffer[12..16].copy_from_slice(&payload.to_le_bytes());
        &self.buffer
    }

    pub(crate) fn hello(&mut self, m: &Hello<'_>) -> &[u8] {
        self.start(Type::Hello, 0).u16(MAJOR_VERSION).u16(MINOR_VERSION);
        self.u32(m.features).u32(m.flags).u32(m.max_in_flight).u32(m.columns.len() as u32);
        for column in m.columns {
            self.bytes(column.as_bytes());
        }
        self.bytes(m.required_schema).finish()
    }
    pub(crate) fn release(&mut self, sequences: &[u64]) -> &[u8] {
        self.start(Type::Release, 0).u32(sequences.len() as u32);
        for &sequence in sequences {
            self.u64(sequence);
        }
        self.finish()
    }
    pub(crate) fn request(&mut self, stream: u32, request: &[u8]) -> &[u8] {
        self.start(Type::Request, stream).bytes(request).finish()
    }
    pub(crate) fn waiting(&mut self, entries_read: u64) -> &[u8] {
        self.start(Type::Waiting, 0).u64(entries_read).finish()
    }
    pub(crate) fn bye(&mut self) -> &[u8] {
        self.start(Type::Bye, 0).finish()
    }
    pub(crate) fn welcome(&mut self, m: &Welcome) -> &[u8] {
        self.start(Type::Welcome, 0).u16(m.major).u16(m.minor).u32(m.features);
        self.u32(u32::from(m.ring_mode)).u32(m.consumer_id).u64(m.ring_size);
        self.u32(m.max_consumers).u32(m.max_in_flight).u32(MAX_MESSAGE_SIZE as u32);
        self.bytes(&m.schema).u64(m.queue_offset).u32(m.queue_capacity).finish()
    }
    pub(crate) fn batch(&mut self, m: &BatchRef) -> &[u8] {
        self.start(Type::Batch, 0).u64(m.sequence).u64(m.dropped);
        self.u64(m.metadata_offset).u32(m.metadata_length).finish()
    }
    pub(crate) fn end(&mut self) -> &[u8] {
        self.start(Type::End, 0).finish()
    }
    pub(crate) fn error(&mut self, stream: u32, code: u32, message: &str) -> &[u8] {
        self.start(Type::Error, stream).u32(code).bytes(message.as_bytes()).finish()
    }
}

/// Bounds-checked reading of one received datagram: every failure names the field and offset.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, position: 0 }
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let end = self.position + N;
        let bytes = self.data.get(self.position..end).ok_or_else(|| {
            Error::Protocol(format!(
                "message ends at byte {} before field '{field}' at byte {}",
                self.data.len(),
                self.position
            ))
        })?;
        self.position = end;
        Ok(bytes.try_into().expect("slice of N bytes"))
    }
    pub(crate) fn u16(&mut self, field: &str) -> Result<u16> {
        self.take::<2>(field).map(u16::from_le_bytes)
    }
    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        self.take::<4>(field).map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self, field: &str) -> Result<u64> {
        self.take::<8>(field).map(u64::from_le_bytes)
    }
    pub(crate) fn bytes(&mut self, field: &str) -> Result<&'a [u8]> {
        let length = self.u32(field)? as usize;
        let remaining = self.data.len() - self.position;
        if length > remaining {
            return Err(Error::Protocol(format!(
                "field '{field}' claims {length} bytes at byte {}; {remaining} remain",
                self.position
            )));
        }
        let bytes = &self.data[self.position..self.position + length];
        self.position += length;
        Ok(bytes)
    }
    /// The message must have been read completely.
    pub(crate) fn expect_end(&self, message: &str) -> Result<()> {
        if self.position != self.data.len() {
            return Err(Error::Protocol(format!(
                "{} unexpected trailing bytes in {message}",
                self.data.len() - self.position
            )));
        }
        Ok(())
    }

    pub(crate) fn header(&mut self) -> Result<Header> {
        if self.data.len() < HEADER_SIZE {
            return Err(Error::Protocol(format!(
                "{}-byte message is shorter than the {HEADER_SIZE}-byte header",
                self.data.len()
            )));
        }
        let magic = self.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::Protocol(format!("bad magic 0x{magic:x} (expected 0x{MAGIC:x})")));
        }
        let kind = self.u16("type")?;
        let flags = self.u16("flags")?;
        let stream = self.u32("stream")?;
        let length = self.u32("length")? as usize;
        let kind = Type::from_u16(kind)
            .ok_or_else(|| Error::Protocol(format!("unknown message type {kind}")))?;
        if flags != 0 {
            return Err(Error::Protocol(format!("unknown header flags {flags}")));
        }
        if length != self.data.len() - HEADER_SIZE {
            return Err(Error::Protocol(format!(
                "header announces {length} payload bytes, the message has {}",
                self.data.len() - HEADER_SIZE
            )));
        }
        Ok(Header { kind, stream })
    }

    pub(crate) fn welcome(&mut self) -> Result<Welcome> {
        let major = self.u16("major")?;
        let minor = self.u16("minor")?;
        let mut m = Welcome {
            major,
            minor,
            features: 0,
            ring_mode: false,
            consumer_id: 0,
            ring_size: 0,
            max_consumers: 0,
            max_in_flight: 0,
            schema: Vec::new(),
            queue_offset: 0,
            queue_capacity: 0,
        };
        if major != MAJOR_VERSION {
            return Ok(m); // the rest may differ in another major version
        }
        m.features = self.u32("features")?;
        m.ring_mode = match self.u32("mode")? {
            0 => false,
            1 => true,
            mode => return Err(Error::Protocol(format!("unknown memory mode {mode}"))),
        };
        m.consumer_id = self.u32("consumer_id")?;
        m.ring_size = self.u64("ring_size")?; // the consumer maps the size fstat reports
        m.max_consumers = self.u32("max_consumers")?;
        m.max_in_flight = self.u32("max_in_flight")?;
        self.u32("max_message_size")?;
        m.schema = self.bytes("schema")?.to_vec();
        if minor >= 1 {
            m.queue_offset = self.u64("queue_offset")?;
            m.queue_capacity = self.u32("queue_capacity")?;
        }
        if minor == MINOR_VERSION {
            self.expect_end("Welcome")?;
        }
        Ok(m) // a newer minor version may append fields: they are ignored
    }

    /// A Hello: (major, features, flags, max_in_flight, columns, required schema). Another major
    /// version's fields are not read.
    pub(crate) fn hello(&mut self) -> Result<ReceivedHello> {
        let major = self.u16("major")?;
        let minor = self.u16("minor")?;
        let mut m = ReceivedHello { major, minor, ..ReceivedHello::default() };
        if major != MAJOR_VERSION {
            return Ok(m);
        }
        m.features = self.u32("features")?;
        m.flags = self.u32("flags")?;
        m.max_in_flight = self.u32("max_in_flight")?;
        let count = self.u32("column count")?;
        if count as usize > MAX_RUN {
            return Err(Error::Protocol(format!(
                "Hello asks for {count} columns (limit {MAX_RUN})"
            )));
        }
        for _ in 0..count {
            m.columns.push(String::from_utf8_lossy(self.bytes("column name")?).into_owned());
        }
        m.required_schema = self.bytes("required schema")?.to_vec();
        if minor == MINOR_VERSION {
            self.expect_end("Hello")?;
        }
        Ok(m)
    }

    /// Appends a Release's sequences to `out`.
    pub(crate) fn release(&mut self, out: &mut Vec<u64>) -> Result<()> {
        let count = self.u32("count")? as usize;
        if count > MAX_RUN {
            return Err(Error::Protocol(format!("Release of {count} batches (limit {MAX_RUN})")));
        }
        for _ in 0..count {
            out.push(self.u64("sequence")?);
        }
        self.expect_end("Release")
    }

    fn batch_ref(&mut self) -> Result<BatchRef> {
        Ok(BatchRef {
            sequence: self.u64("sequence")?,
            dropped: self.u64("dropped")?,
            metadata_offset: self.u64("metadata_offset")?,
            metadata_length: self.u32("metadata_length")?,
        })
    }

    pub(crate) fn batch(&mut self) -> Result<BatchRef> {
        let m = self.batch_ref()?;
        self.expect_end("Batch")?;
        Ok(m)
    }

    /// Replaces `out`'s contents: 1 to MAX_RUN entries.
    pub(crate) fn batches(&mut self, out: &mut Vec<BatchRef>) -> Result<()> {
        let count = self.u32("count")? as usize;
        if count == 0 || count > MAX_RUN {
            return Err(Error::Protocol(format!(
                "Batches of {count} batches (1 to {MAX_RUN} allowed)"
            )));
        }
        out.clear();
        for _ in 0..count {
            out.push(self.batch_ref()?);
        }
        self.expect_end("Batches")
    }

    pub(crate) fn schema(&mut self) -> Result<&'a [u8]> {
        let schema = self.bytes("schema")?;
        self.expect_end("Schema")?;
        Ok(schema)
    }

    /// (code, message)
    pub(crate) fn error(&mut self) -> Result<(u32, String)> {
        let code = self.u32("code")?;
        let message = String::from_utf8_lossy(self.bytes("message")?).into_owned();
        self.expect_end("Error")?;
        Ok((code, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_round_trips_through_the_header_check() {
        let mut writer = Writer::default();
        let message = writer.release(&[3, 9]).to_vec();
        let mut reader = Reader::new(&message);
        let header = reader.header().unwrap();
        assert_eq!(header.kind, Type::Release);
        assert_eq!(reader.u32("count").unwrap(), 2);
        assert_eq!(reader.u64("s").unwrap(), 3);
        assert_eq!(reader.u64("s").unwrap(), 9);
        reader.expect_end("Release").unwrap();
    }

    #[test]
    fn malformed_headers_are_named() {
        let mut writer = Writer::default();
        let mut message = writer.bye().to_vec();
        message[12] = 4; // claims 4 payload bytes it does not have
        let error = Reader::new(&message).header().err().unwrap().to_string();
        assert!(error.contains("announces 4 payload bytes"), "{error}");
        message[12] = 0;
        message[4] = 99;
        let error = Reader::new(&message).header().err().unwrap().to_string();
        assert!(error.contains("unknown message type 99"), "{error}");
        let error = Reader::new(&message[..10]).header().err().unwrap().to_string();
        assert!(error.contains("shorter than the 16-byte header"), "{error}");
    }

    #[test]
    fn a_field_longer_than_the_message_is_refused() {
        let mut data = 1000u32.to_le_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let error = Reader::new(&data).bytes("schema").err().unwrap().to_string();
        assert!(error.contains("'schema' claims 1000 bytes at byte 4; 3 remain"), "{error}");
    }
}
