"""Publish a stream whose batches pyarrow builds directly in shared memory.

    python examples/python/producer.py --socket @weather --consumers 1

Every array is built with ``memory_pool=producer.memory_pool``, so publishing copies nothing
(the last line prints ``copied 0 bytes``). Leaving the ``with`` block ends the stream, waits for the
consumers to read and release it, and closes.
"""

from __future__ import annotations

import argparse

import pyarrow as pa
import pyarrow.compute as pc

import shmarrow

SCHEMA = pa.schema([("city", pa.string()), ("celsius", pa.float64()), ("hot", pa.bool_())])
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="@shmarrow-example")
    parser.add_argument("--consumers", type=int, default=1, help="wait for this many")
    parser.add_argument("--days", type=int, default=3, help="batches to publish")
    args = parser.parse_args()

    with shmarrow.Producer(args.socket, SCHEMA) as producer:
        producer.wait_for_consumers(args.consumers, timeout=30)
        pool = producer.memory_pool
        for day in range(args.days):
            city = pa.array(CITIES, memory_pool=pool)
            celsius = pa.array([18.5 + day, -3.0 + day, 31.0 + day, 22.0 - day], memory_pool=pool)
            hot = pc.greater(celsius, 25.0, memory_pool=pool)
            producer.publish(pa.record_batch([city, celsius, hot], schema=SCHEMA))
        stats = producer.stats
        print(f"published {stats['published']} batches, copied {stats['bytes_copied']} bytes")


if __name__ == "__main__":
    main()
