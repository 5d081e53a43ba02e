//! Generated batches for `shmarrow-rs send`: columns named and typed by a spec such as
//! `a:int32,b:utf8`, values from a seeded xorshift generator, a fraction of them null.
//! (Not the C++ generator's values: tests compare the sender's own summary with what consumers
//! received.)

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// The schema of a spec: `name:type` pairs joined by commas (`shmarrow`'s `--schema` and
/// `--expect-schema`, with more types).
pub fn parse_schema(spec: &str) -> Result<SchemaRef, String> {
    let fields = spec
        .split(',')
        .map(|item| {
            let (name, kind) = item.split_once(':').ok_or(format!("'{item}' is not name:type"))?;
            let data_type = match kind {
                "bool" => DataType::Boolean,
                "int8" => DataType::Int8,
                "int16" => DataType::Int16,
                "int32" => DataType::Int32,
                "int64" => DataType::Int64,
                "uint8" => DataType::UInt8,
                "uint16" => DataType::UInt16,
                "uint32" => DataType::UInt32,
                "uint64" => DataType::UInt64,
                "float32" => DataType::Float32,
                "float64" | "double" => DataType::Float64,
                "utf8" | "string" => DataType::Utf8,
                other => return Err(format!("unknown type '{other}' (bool, int8..int64, uint8..uint64, float32, float64, utf8)")),
            };
            Ok(Field::new(name, data_type, true))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Batches of a schema, deterministic for a seed.
pub struct Generator {
    schema: SchemaRef,
    state: u64,
    null_fraction: f64,
}

impl Generator {
    pub fn new(schema: SchemaRef, seed: u64, null_fraction: f64) -> Self {
        // xorshift must not start at 0
        Generator { schema, state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, null_fraction }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn values<T>(&mut self, rows: usize, mut value: impl FnMut(u64) -> T) -> Vec<Option<T>> {
        (0..rows)
            .map(|_| {
                let draw = self.next_u64();
                let null = (draw >> 11) as f64 / (1u64 << 53) as f64 <= self.null_fraction
                    && self.null_fraction > 0.0;
                (!null).then(|| value(self.next_u64()))
            })
            .collect()
    }

    pub fn next_batch(&mut self, rows: usize) -> RecordBatch {
        let schema = self.schema.clone();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| -> ArrayRef {
                match field.data_type() {
                    DataType::Boolean => {
                        Arc::new(BooleanArray::from(self.values(rows, |v| v & 1 == 1)))
                    }
                    DataType::Int8 => Arc::new(Int8Array::from(self.values(rows, |v| v as i8))),
                    DataType::Int16 => Arc::new(Int16Array::from(self.values(rows, |v| v as i16))),
                    DataType::Int32 => Arc::new(Int32Array::from(self.values(rows, |v| v as i32))),
                    DataType::Int64 => Arc::new(Int64Array::from(self.values(rows, |v| v as i64))),
                    DataType::UInt8 => Arc::new(UInt8Array::from(self.values(rows, |v| v as u8))),
                    DataType::UInt16 => {
                        Arc::new(UInt16Array::from(self.values(rows, |v| v as u16)))
                    }
                    DataType::UInt32 => {
                        Arc::new(UInt32Array::from(self.values(rows, |v| v as u32)))
                    }
                    DataType::UInt64 => Arc::new(UInt64Array::from(self.values(rows, |v| v))),
                    DataType::Float32 => {
                        Arc::new(Float32Array::from(self.values(rows, |v| (v >> 40) as f32 / 7.0)))
                    }
                    DataType::Float64 => {
                        Arc::new(Float64Array::from(self.values(rows, |v| (v >> 11) as f64 / 3.0)))
                    }
                    _ => Arc::new(StringArray::from(
                        self.values(rows, |v| format!("s{}", v % 100_000)),
                    )),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).expect("columns built for the schema")
    }
}
