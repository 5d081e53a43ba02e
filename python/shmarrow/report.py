"""The human-readable report of a received stream, in the format of the original proof of concept
(which the C++ ``shmarrow recv`` prints too, byte for byte for the types of its data)."""

import pandas as pd
import pyarrow as pa

HEAD_ROWS = 10

# Types whose values the report formats itself, from the values pandas gives.
_PLAIN = (pa.types.is_boolean, pa.types.is_integer, pa.types.is_float32, pa.types.is_float64,
          pa.types.is_string, pa.types.is_large_string)
# What pyarrow raises, besides its own exceptions, for values Python cannot represent (e.g. a
# struct with duplicate field names).
_UNREPRESENTABLE = (pa.ArrowException, ValueError, OverflowError, KeyError, TypeError)


def render_fields(schema: pa.Schema) -> str:
    """Fields as "name: type" joined by ", "."""
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def format_value(value, arrow_type: pa.DataType, is_null: bool) -> str:
    """One cell as the C++ tool prints it. The Arrow type decides, not the pandas value's Python
    type, so an integer stays an integer whatever pandas would have made of it."""
    if is_null:
        return "null"
    if pa.types.is_boolean(arrow_type):
        return "true" if value else "false"
    if pa.types.is_integer(arrow_type):
        return str(int(value))
    if pa.types.is_float32(arrow_type) or pa.types.is_float64(arrow_type):
        return "%g" % float(value)  # C printf's %g, as the C++ tool formats it
    return str(value)


def _as_displayed(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Columns of types beyond _PLAIN become text through Arrow's cast to utf8: the C++ tool's
    Scalar::ToString tries that cast first, so both print timestamps, decimals, durations and
    dictionary values alike, and values Python cannot represent (a year after 9999) still print.
    Types Arrow cannot cast stay as they are, for pandas to turn into Python values."""
    if any(test(column.type) for test in _PLAIN):
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return column


def _cells(series: pd.Series, arrow_type: pa.DataType) -> list[str]:
    nulls = series.isna().tolist()
    try:
        values = series.tolist()
    except _UNREPRESENTABLE:
        return ["null" if null else "?" for null in nulls]
    return [format_value(value, arrow_type, null) for value, null in zip(values, nulls)]


def head_rows(table: pa.Table, count: int = HEAD_ROWS) -> list[list[str]]:
    """The first ``count`` rows as formatted cells, through pandas. pd.ArrowDtype keeps nulls as
    nulls (a plain int column with nulls would become float64) and NaN apart from null."""
    head = table.slice(0, count)
    shown = pa.Table.from_arrays([_as_displayed(c) for c in head.columns], names=head.column_names)
    frame = shown.to_pandas(types_mapper=pd.ArrowDtype)
    columns = [_cells(frame.iloc[:, j], field.type) for j, field in enumerate(shown.schema)]
    return [list(row) for row in zip(*columns)]


def render_report(schema: pa.Schema, batches: list[pa.RecordBatch]) -> str:
    """The whole report, ending with a newline."""
    table = pa.Table.from_batches(batches, schema=schema)
    fields = render_fields(schema)
    lines = [f"RecordBatch schema: {fields}"]
    for field in schema:
        lines += [f"Column name: {field.name}", f"Column Arrow type: {field.type}"]
    lines += [
        "== Arrow Table Summary ==",
        f"Schema      : {fields}",
        f"Num Columns : {table.num_columns}",
        f"Num Rows    : {table.num_rows}",
        "",
        f"== First {HEAD_ROWS} Rows ==",
        "\t".join(schema.names),
        "-" * 40,
    ]
    lines += ["\t".join(row) for row in head_rows(table)]
    return "\n".join(lines) + "\n"
