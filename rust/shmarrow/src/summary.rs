//! The one-line JSON summary and column checksums of `shmarrow recv --json`
//! (docs/protocol.md, "Column checksums" and "JSON summary").

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType, OffsetSizeTrait, RecordBatch};
use arrow_buffer::ToByteSlice;
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};

use crate::ipc::{field_type_name, is_cpp_extension};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;
const NULL_HASH: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// Whether the checksum is defined for a type (the documented list, nothing more).
fn has_checksum(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Date32
            | Date64
            | Time32(_)
            | Time64(_)
            | Timestamp(..)
            | Duration(_)
            | Utf8
            | LargeUtf8
            | Binary
            | LargeBinary
    )
}

/// Σ e_i·(2i+1) over the rows of `array`, numbered from `first_row`.
fn add_checksum(array: &dyn Array, first_row: u64, sum: &mut u64) {
    let mut add = |hash_of: &dyn Fn(usize) -> u64| {
        for i in 0..array.len() {
            let e = if array.is_null(i) { NULL_HASH } else { hash_of(i) };
            *sum = sum.wrapping_add(e.wrapping_mul(2 * (first_row + i as u64) + 1));
        }
    };
    fn primitive<T: ArrowPrimitiveType>(array: &dyn Array) -> impl Fn(usize) -> u64 + '_ {
        let values = array.as_primitive::<T>().values();
        move |i| fnv1a(values[i].to_byte_slice())
    }
    fn binary<O: OffsetSizeTrait>(array: &dyn Array) -> impl Fn(usize) -> u64 + '_ {
        let values = array.as_binary::<O>();
        move |i| fnv1a(values.value(i))
    }
    fn string<O: OffsetSizeTrait>(array: &dyn Array) -> impl Fn(usize) -> u64 + '_ {
        let values = array.as_string::<O>();
        move |i| fnv1a(values.value(i).as_bytes())
    }
    use DataType as D;
    match array.data_type() {
        D::Boolean => {
            let values = array.as_boolean();
            add(&|i| fnv1a(&[u8::from(values.value(i))]))
        }
        D::Int8 => add(&primitive::<Int8Type>(array)),
        D::Int16 => add(&primitive::<Int16Type>(array)),
        D::Int32 => add(&primitive::<Int32Type>(array)),
        D::Int64 => add(&primitive::<Int64Type>(array)),
        D::UInt8 => add(&primitive::<UInt8Type>(array)),
        D::UInt16 => add(&primitive::<UInt16Type>(array)),
        D::UInt32 => add(&primitive::<UInt32Type>(array)),
        D::UInt64 => add(&primitive::<UInt64Type>(array)),
        D::Float32 => add(&primitive::<Float32Type>(array)),
        D::Float64 => add(&primitive::<Float64Type>(array)),
        D::Date32 => add(&primitive::<Date32Type>(array)),
        D::Date64 => add(&primitive::<Date64Type>(array)),
        D::Time32(TimeUnit::Second) => add(&primitive::<Time32SecondType>(array)),
        D::Time32(_) => add(&primitive::<Time32MillisecondType>(array)),
        D::Time64(TimeUnit::Microsecond) => add(&primitive::<Time64MicrosecondType>(array)),
        D::Time64(_) => add(&primitive::<Time64NanosecondType>(array)),
        // Every unit and time zone has the same 8-byte layout.
        D::Timestamp(..) | D::Duration(_) => {
            let data = array.to_data();
            let values = &data.buffers()[0].as_slice()[data.offset() * 8..];
            add(&|i| fnv1a(&values[i * 8..i * 8 + 8]))
        }
        D::Utf8 => add(&string::<i32>(array)),
        D::LargeUtf8 => add(&string::<i64>(array)),
        D::Binary => add(&binary::<i32>(array)),
        D::LargeBinary => add(&binary::<i64>(array)),
        _ => {}
    }
}

/// Arrow C++'s JSON string quoting, as `shmarrow recv --json` writes it.
pub fn json_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One column of the summary: the rows of every batch that had a column of this name (the n-th
/// of that name) and this type.
struct ColumnSum {
    data_type: DataType,
    null_count: u64,
    checksum: u64,
}

/// Batches, rows, null counts and checksums of a stream, summed batch by batch, with columns
/// followed by name as `shmarrow recv` does for a stream whose schema changes midway: each column
/// of the last schema sums the rows of every batch that has a column of that name and type, with
/// row numbers counted over the whole stream (a column added midway starts where it appears; one
/// whose type changed counts from its first batch with the new type). Without a schema change,
/// this is the plain definition of docs/protocol.md.
pub struct StreamSummary {
    schema: SchemaRef,
    columns: HashMap<(String, usize), ColumnSum>,
    batches: u64,
    rows: u64,
}

/// Each field with its key: its name and how many fields of that name came before it.
fn keyed(schema: &SchemaRef) -> impl Iterator<Item = (usize, (String, usize))> + '_ {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    schema.fields().iter().enumerate().map(move |(i, field)| {
        let occurrence = seen.entry(field.name().as_str()).or_default();
        *occurrence += 1;
        (i, (field.name().clone(), *occurrence - 1))
    })
}

impl StreamSummary {
    /// An empty summary of a stream with `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        StreamSummary { schema, columns: HashMap::new(), batches: 0, rows: 0 }
    }

    /// The schema reported: after a schema change, set the stream's last schema.
    pub fn set_schema(&mut self, schema: SchemaRef) {
        self.schema = schema;
    }

    /// Adds one batch (row numbers continue from the batches before).
    pub fn add(&mut self, batch: &RecordBatch) {
        for (i, key) in keyed(&batch.schema()) {
            let column = batch.column(i);
            let sum = self.columns.entry(key).or_insert_with(|| ColumnSum {
                data_type: column.data_type().clone(),
                null_count: 0,
                checksum: 0,
            });
            if sum.data_type != *column.data_type() {
                *sum =
                    ColumnSum { data_type: column.data_type().clone(), null_count: 0, checksum: 0 };
            }
            // Arrow C++ counts every slot of a null-type array as null.
            sum.null_count += match column.data_type() {
                DataType::Null => column.len(),
                _ => column.null_count(),
            } as u64;
            add_checksum(column.as_ref(), self.rows, &mut sum.checksum);
        }
        self.batches += 1;
        self.rows += batch.num_rows() as u64;
    }

    /// The schema reported.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Batches added.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Rows added.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Null count and checksum of each field of the schema (the checksum is None for a type
    /// without a checksum definition).
    pub fn columns(&self) -> Vec<(u64, Option<u64>)> {
        keyed(&self.schema)
            .map(|(i, key)| {
                let field = self.schema.field(i);
                let defined = has_checksum(field.data_type()) && !is_cpp_extension(field);
                match self.columns.get(&key).filter(|sum| sum.data_type == *field.data_type()) {
                    Some(sum) => (sum.null_count, defined.then_some(sum.checksum)),
                    None => (0, defined.then_some(0)), // no rows yet
                }
            })
            .collect()
    }

    /// `{"schema":[...],"batches":N,"rows":N,"columns":[...]}` plus `extra` members
    /// (`"name":value` pairs joined by commas), one line.
    pub fn to_json(&self, extra: &str) -> String {
        fn described(field: &Field) -> String {
            format!(
                "\"name\":{},\"type\":{}",
                json_quote(field.name()),
                json_quote(&field_type_name(field))
            )
        }
        let fields = self.schema.fields();
        let schema: Vec<String> = fields
            .iter()
            .map(|f| format!("{{{},\"nullable\":{}}}", described(f), f.is_nullable()))
            .collect();
        let columns: Vec<String> = fields
            .iter()
            .zip(self.columns())
            .map(|(f, (null_count, checksum))| {
                let checksum = checksum.map_or("null".to_string(), |c| format!("\"{c:016x}\""));
                format!("{{{},\"null_count\":{null_count},\"checksum\":{checksum}}}", described(f))
            })
            .collect();
        let mut out = format!(
            "{{\"schema\":[{}],\"batches\":{},\"rows\":{},\"columns\":[{}]",
            schema.join(","),
            self.batches,
            self.rows,
            columns.join(",")
        );
        if !extra.is_empty() {
            out.push(',');
            out.push_str(extra);
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::Schema;

    use super::*;

    #[test]
    fn checksums_follow_the_definition() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec!["ab", "c"])),
            ],
        )
        .unwrap();
        let mut summary = StreamSummary::new(schema);
        summary.add(&batch);
        summary.add(&batch.slice(1, 1));
        let int = fnv1a(&7i32.to_le_bytes())
            .wrapping_add(NULL_HASH.wrapping_mul(3))
            .wrapping_add(NULL_HASH.wrapping_mul(5));
        let columns = summary.columns();
        assert_eq!(columns[0], (2, Some(int)));
        let text = fnv1a(b"ab")
            .wrapping_add(fnv1a(b"c").wrapping_mul(3))
            .wrapping_add(fnv1a(b"c").wrapping_mul(5));
        assert_eq!(columns[1], (0, Some(text)));
        assert_eq!(summary.rows(), 3);
        let json = summary.to_json("\"mode\":\"ring\"");
        assert!(
            json.starts_with("{\"schema\":[{\"name\":\"i\",\"type\":\"int32\",\"nullable\":true},"),
            "{json}"
        );
        assert!(json.ends_with(",\"mode\":\"ring\"}"), "{json}");
    }

    #[test]
    fn a_column_added_midway_counts_from_its_first_row() {
        let one = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let two = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("x", DataType::Int32, true),
        ]));
        let first = RecordBatch::try_new(one.clone(), vec![Arc::new(Int32Array::from(vec![1, 2]))])
            .unwrap();
        let column: Arc<dyn Array> = Arc::new(Int32Array::from(vec![3]));
        let second = RecordBatch::try_new(two.clone(), vec![column.clone(), column]).unwrap();
        let mut summary = StreamSummary::new(one);
        summary.add(&first);
        summary.add(&second);
        summary.set_schema(two);
        let three = fnv1a(&3i32.to_le_bytes()).wrapping_mul(5); // row 2: 2·2+1
        let a = fnv1a(&1i32.to_le_bytes())
            .wrapping_add(fnv1a(&2i32.to_le_bytes()).wrapping_mul(3))
            .wrapping_add(three);
        assert_eq!(summary.columns(), vec![(0, Some(a)), (0, Some(three))]);
    }

    #[test]
    fn json_quoting_matches_arrow_cpp() {
        assert_eq!(json_quote("a\"b\\\n\u{1}é"), "\"a\\\"b\\\\\\n\\u0001é\"");
    }
}
