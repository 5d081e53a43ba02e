"""Query a stream with polars and with duckdb, both reading the shared memory in place.

    python examples/python/producer.py --socket @weather --consumers 2 &
    python examples/python/polars_duckdb.py --socket @weather

Each library takes a Consumer through the Arrow PyCapsule interface (``__arrow_c_stream__``) and
reads the rest of its stream. ``pl.DataFrame(consumer)`` gives a DataFrame (``pl.from_arrow``
gives a Series of structs for any stream that is not pyarrow's own: polars' choice).
"""

from __future__ import annotations

import argparse

import duckdb
import polars as pl

import shmarrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="@shmarrow-example")
    args = parser.parse_args()

    # Two consumers, one per library: each reads the whole stream.
    with shmarrow.Consumer(args.socket, connect_timeout=30, read_timeout=30) as for_polars, \
            shmarrow.Consumer(args.socket, connect_timeout=30, read_timeout=30) as stream:
        frame = pl.DataFrame(for_polars)
        warmest = frame.group_by("city").agg(pl.col("celsius").max())
        print("polars:", warmest.sort("celsius", descending=True).row(0))
        # duckdb finds the Python variable `stream` by its name in the query.
        query = duckdb.sql("SELECT city, avg(celsius) AS mean FROM stream "
                           "GROUP BY city ORDER BY mean DESC LIMIT 1")
        assert query is not None  # a SELECT always has a result
        rows = query.fetchall()
    print("duckdb:", rows[0])


if __name__ == "__main__":
    main()
