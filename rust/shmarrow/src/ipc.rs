//! Reading the Arrow IPC that the producer wrote, in place: the checks shmarrow adds before
//! arrow-ipc sees a message (no compression, every buffer inside the body), and Arrow C++'s
//! names of types (the JSON summary uses them).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::{RecordBatchDecoder, StreamDecoder};
use arrow_ipc::MessageHeader;
use arrow_schema::{
    ArrowError, DataType, Field, IntervalUnit, Schema, SchemaRef, TimeUnit, UnionMode,
};

use crate::error::{Error, Result};

const CONTINUATION: u32 = 0xFFFF_FFFF;

/// The flatbuffers verifier's message, on one line.
fn malformed(error: flatbuffers::InvalidFlatbuffer) -> String {
    let text = error.to_string();
    format!("malformed message ({})", text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// arrow-rs panics on some malformed input instead of returning an error (a buffer slice past
/// the body, for one): a hostile producer's bytes must give an error, never a crash.
fn no_panic<T>(what: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, ArrowError> {
    catch_unwind(AssertUnwindSafe(what)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        Err(ArrowError::IpcError(format!("arrow-ipc refused malformed input: {reason}")))
    })
}

/// A schema as the protocol sends it: an encapsulated IPC Schema message.
pub(crate) fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    no_panic(|| arrow_ipc::convert::try_schema_from_ipc_buffer(bytes))
        .map(Arc::new)
        .map_err(|e| Error::arrow(format!("schema message of {} bytes", bytes.len()), e))
}

/// A schema as the protocol sends it: an encapsulated IPC Schema message (the first message of
/// an IPC stream that has nothing else).
pub(crate) fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    let stream = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)
        .and_then(|w| w.into_inner())
        .map_err(|e| Error::arrow("serializing a schema", e))?;
    // The stream is the schema message followed by the 8-byte end-of-stream marker.
    Ok(stream[..stream.len() - 8].to_vec())
}

/// Whether `actual` is what a consumer requires: exactly `expected` (same fields, types,
/// nullability, order) or, as a subset, every field of `expected` by name with the same type.
/// The error names the fields and types on both sides.
pub(crate) fn check_schema(expected: &Schema, actual: &Schema, subset: bool) -> Result<(), String> {
    let mut problems = Vec::new();
    let describe = |f: &Field| {
        format!(
            "{}: {}{}",
            f.name(),
            field_type_name(f),
            if f.is_nullable() { "" } else { " not null" }
        )
    };
    if !subset && expected.fields().len() != actual.fields().len() {
        problems.push(format!(
            "expected {} fields, producer has {}",
            expected.fields().len(),
            actual.fields().len()
        ));
    }
    for (i, want) in expected.fields().iter().enumerate() {
        if !subset {
            match actual.fields().get(i) {
                Some(have)
                    if have.name() == want.name()
                        && have.data_type() == want.data_type()
                        && have.is_nullable() == want.is_nullable() => {}
                Some(have) => problems.push(format!(
                    "field {i}: expected '{}', producer has '{}'",
                    describe(want),
                    describe(have)
                )),
                None => break,
            }
            continue;
        }
        match actual.field_with_name(want.name()) {
            Err(_) => problems.push(format!("field '{}' is missing", describe(want))),
            Ok(have) if have.data_type() != want.data_type() => problems.push(format!(
                "field '{}': expected {}, producer has {}",
                want.name(),
                field_type_name(want),
                field_type_name(have)
            )),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let all = |schema: &Schema| {
        schema.fields().iter().map(|f| describe(f)).collect::<Vec<_>>().join(", ")
    };
    Err(format!(
        "schema mismatch ({}): {}. Expected {}, producer has {}",
        if subset { "subset" } else { "exact" },
        problems.join("; "),
        all(expected),
        all(actual)
    ))
}

/// Ring mode does not carry dictionaries (docs/protocol.md).
pub(crate) fn check_no_dictionaries(schema: &Schema) -> Result<()> {
    fn has_dictionary(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(..) => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _)
            | DataType::Map(f, _) => has_dictionary(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
            DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
            DataType::RunEndEncoded(_, values) => has_dictionary(values.data_type()),
            _ => false,
        }
    }
    match schema.fields().iter().find(|f| has_dictionary(f.data_type())) {
        Some(field) => Err(Error::Protocol(format!(
            "field '{}' is dictionary-encoded, which ring mode does not carry",
            field.name()
        ))),
        None => Ok(()),
    }
}

/// The checks before arrow-ipc reads a batch or dictionary: its body is not compressed (it could
/// never be read in place, and decompressing allocates whatever the producer claims), and every
/// buffer lies inside the body.
fn check_batch(batch: &arrow_ipc::RecordBatch<'_>, body_len: u64) -> Result<(), String> {
    if batch.compression().is_some() {
        return Err("the record batch body is compressed (shmarrow never compresses)".into());
    }
    for (i, buffer) in batch.buffers().into_iter().flatten().enumerate() {
        let (offset, length) = (buffer.offset(), buffer.length());
        let inside = offset >= 0
            && length >= 0
            && (offset as u64).checked_add(length as u64).is_some_and(|end| end <= body_len);
        if !inside {
            return Err(format!(
                "buffer {i} at [{offset}, +{length}) is outside the {body_len}-byte body"
            ));
        }
    }
    Ok(())
}

fn check_message(message: &arrow_ipc::Message<'_>, body_len: u64) -> Result<(), String> {
    match message.header_type() {
        MessageHeader::RecordBatch => match message.header_as_record_batch() {
            Some(batch) => check_batch(&batch, body_len),
            None => Err("record batch message without its header".into()),
        },
        MessageHeader::DictionaryBatch => {
            match message.header_as_dictionary_batch().and_then(|d| d.data()) {
                Some(batch) => check_batch(&batch, body_len),
                None => Err("dictionary batch message without its data".into()),
            }
        }
        _ => Ok(()),
    }
}

/// Reads a complete Arrow IPC stream (schema, dictionaries, batches, end-of-stream) that lies in
/// `stream`, in place: every batch's buffers are slices of `stream` (unless arrow-rs must copy a
/// buffer that is not aligned for its type).
pub(crate) fn read_stream(stream: &Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let len = stream.len();
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    let mut position = 0usize;
    let at = |position: usize, what: &str| {
        Error::Protocol(format!("IPC stream of {len} bytes: {what} at byte {position}"))
    };
    loop {
        let word = |p: usize| -> Option<u32> {
            stream.get(p..p + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let first =
            word(position).ok_or_else(|| at(position, "ends without the end-of-stream marker"))?;
        let (prefix, metadata_len) = if first == CONTINUATION {
            (8, word(position + 4).ok_or_else(|| at(position, "message length cut short"))?)
        } else {
            (4, first) // the format before the continuation marker
        };
        let metadata_start = position + prefix;
        if metadata_len == 0 {
            // End of stream: handed to the decoder too, which finishes a message without body.
            let mut end = stream.slice_with_length(position, prefix);
            decode_all(&mut decoder, &mut end, &mut batches, position)?;
            break;
        }
        let metadata_end = metadata_start
            .checked_add(metadata_len as usize)
            .filter(|&end| end <= len)
            .ok_or_else(|| {
                at(position, &format!("a {metadata_len}-byte message runs past the end"))
            })?;
        let message = arrow_ipc::root_as_message(&stream[metadata_start..metadata_end])
            .map_err(|e| at(position, &malformed(e)))?;
        let body_len = u64::try_from(message.bodyLength()).unwrap_or(u64::MAX);
        let end = (metadata_end as u64)
            .checked_add(body_len)
            .filter(|&end| end <= len as u64)
            .ok_or_else(|| at(position, &format!("a {body_len}-byte body runs past the end")))?
            as usize;
        check_message(&message, body_len).map_err(|e| at(position, &e))?;
        let mut whole = stream.slice_with_length(position, end - position);
        decode_all(&mut decoder, &mut whole, &mut batches, position)?;
        position = end;
    }
    let schema = decoder
        .schema()
        .ok_or_else(|| Error::Protocol(format!("IPC stream of {len} bytes has no schema")))?;
    Ok((schema, batches))
}

fn decode_all(
    decoder: &mut StreamDecoder,
    chunk: &mut Buffer,
    batches: &mut Vec<RecordBatch>,
    position: usize,
) -> Result<()> {
    loop {
        let decoded = no_panic(|| decoder.decode(chunk))
            .map_err(|e| Error::arrow(format!("IPC message at byte {position}"), e))?;
        match decoded {
            Some(batch) => batches.push(batch),
            None => return Ok(()),
        }
    }
}

/// Reads one ring-mode batch: `metadata` (a private copy) is a Message flatbuffer whose buffer
/// offsets are relative to offset 0 of the ring, and `ring` the whole ring.
pub(crate) fn read_ring_batch(
    metadata: &[u8],
    ring: &Buffer,
    schema: &SchemaRef,
) -> Result<RecordBatch, String> {
    let message = arrow_ipc::root_as_message(metadata).map_err(malformed)?;
    let batch = message.header_as_record_batch().ok_or_else(|| {
        format!("a {:?} message where a record batch belongs", message.header_type())
    })?;
    check_batch(&batch, ring.len() as u64)?;
    let dictionaries = HashMap::new();
    let version = message.version();
    no_panic(|| {
        RecordBatchDecoder::try_new(ring, batch, schema.clone(), &dictionaries, &version)?
            .read_record_batch()
    })
    .map_err(|e| e.to_string())
}

/// Extension types that Arrow C++ registers by default and names `extension<NAME>`; arrow-rs
/// keeps only the storage type (the name is in the field's metadata). Others stay their storage
/// type in Arrow C++ too.
const CPP_EXTENSIONS: [&str; 3] = ["arrow.uuid", "arrow.json", "arrow.bool8"];

/// The canonical extension type of a field that Arrow C++ reads as an extension type.
fn cpp_extension(field: &Field) -> Option<&str> {
    field
        .metadata()
        .get("ARROW:extension:name")
        .map(String::as_str)
        .filter(|name| CPP_EXTENSIONS.contains(name))
}

/// The name Arrow C++ (`DataType::ToString`) and pyarrow (`str`) give a field's type.
pub fn field_type_name(field: &Field) -> String {
    match cpp_extension(field) {
        Some(name) => format!("extension<{name}>"),
        None => type_name(field.data_type()),
    }
}

/// Whether Arrow C++ reads the field as a (canonical) extension type.
pub(crate) fn is_cpp_extension(field: &Field) -> bool {
    cpp_extension(field).is_some()
}

/// The name Arrow C++ (`DataType::ToString`) and pyarrow (`str`) give a type.
pub fn type_name(t: &DataType) -> String {
    fn unit(u: &TimeUnit) -> &'static str {
        match u {
            TimeUnit::Second => "s",
            TimeUnit::Millisecond => "ms",
            TimeUnit::Microsecond => "us",
            TimeUnit::Nanosecond => "ns",
        }
    }
    fn field(f: &Field) -> String {
        let not_null = if f.is_nullable() { "" } else { " not null" };
        format!("{}: {}{not_null}", f.name(), field_type_name(f))
    }
    match t {
        DataType::Null => "null".into(),
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 => "halffloat".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 => "string".into(),
        DataType::LargeUtf8 => "large_string".into(),
        DataType::Utf8View => "string_view".into(),
        DataType::Binary => "binary".into(),
        DataType::LargeBinary => "large_binary".into(),
        DataType::BinaryView => "binary_view".into(),
        DataType::FixedSizeBinary(n) => format!("fixed_size_binary[{n}]"),
        DataType::Date32 => "date32[day]".into(),
        DataType::Date64 => "date64[ms]".into(),
        DataType::Time32(u) => format!("time32[{}]", unit(u)),
        DataType::Time64(u) => format!("time64[{}]", unit(u)),
        DataType::Timestamp(u, None) => format!("timestamp[{}]", unit(u)),
        DataType::Timestamp(u, Some(tz)) => format!("timestamp[{}, tz={tz}]", unit(u)),
        DataType::Duration(u) => format!("duration[{}]", unit(u)),
        DataType::Interval(IntervalUnit::YearMonth) => "month_interval".into(),
        DataType::Interval(IntervalUnit::DayTime) => "day_time_interval".into(),
        DataType::Interval(IntervalUnit::MonthDayNano) => "month_day_nano_interval".into(),
        DataType::Decimal32(p, s) => format!("decimal32({p}, {s})"),
        DataType::Decimal64(p, s) => format!("decimal64({p}, {s})"),
        DataType::Decimal128(p, s) => format!("decimal128({p}, {s})"),
        DataType::Decimal256(p, s) => format!("decimal256({p}, {s})"),
        DataType::List(f) => format!("list<{}>", field(f)),
        DataType::LargeList(f) => format!("large_list<{}>", field(f)),
        DataType::ListView(f) => format!("list_view<{}>", field(f)),
        DataType::LargeListView(f) => format!("large_list_view<{}>", field(f)),
        DataType::FixedSizeList(f, n) => format!("fixed_size_list<{}>[{n}]", field(f)),
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields.iter().map(|f| field(f)).collect();
            format!("struct<{}>", inner.join(", "))
        }
        DataType::Map(entries, sorted) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return format!("map<{}>", type_name(entries.data_type()));
            };
            let mut out = String::from("map<");
            for (i, (f, default)) in kv.iter().zip(["key", "value"]).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&type_name(f.data_type()));
                if f.name() != default {
                    out.push_str(&format!(" ('{}')", f.name()));
                }
            }
            if *sorted {
                out.push_str(", keys_sorted");
            }
            out + ">"
        }
        DataType::Union(fields, mode) => {
            let name = match mode {
                UnionMode::Dense => "dense_union",
                UnionMode::Sparse => "sparse_union",
            };
            let inner: Vec<String> =
                fields.iter().map(|(code, f)| format!("{}={code}", field(f))).collect();
            format!("{name}<{}>", inner.join(", "))
        }
        DataType::Dictionary(index, value) => format!(
            "dictionary<values={}, indices={}, ordered=0>",
            type_name(value),
            type_name(index)
        ),
        DataType::RunEndEncoded(run_ends, values) => format!(
            "run_end_encoded<run_ends: {}, values: {}>",
            type_name(run_ends.data_type()),
            type_name(values.data_type())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_arrow_cpp_names() {
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
        assert_eq!(type_name(&list), "list<item: int32>");
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        assert_eq!(type_name(&ts), "timestamp[ms, tz=UTC]");
        let strukt = DataType::Struct(
            vec![Field::new("a", DataType::Int32, true), Field::new("b", DataType::Utf8, false)]
                .into(),
        );
        assert_eq!(type_name(&strukt), "struct<a: int32, b: string not null>");
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_panic() {
        let stream = Buffer::from(vec![0xFFu8, 0xFF, 0xFF, 0xFF, 0x40, 0, 0, 0, 1, 2]);
        let error = read_stream(&stream).err().unwrap().to_string();
        assert!(error.contains("runs past the end"), "{error}");
    }
}
