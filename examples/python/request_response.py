"""Request/response: a consumer asks, the producer's handler answers with a table.

    python examples/python/request_response.py

One process here for brevity (the producer answers on a thread of its own); the consumer may as
well be another process. The answer is built in the producer's memory pool, so in ring mode it
reaches the consumer without a copy.
"""

from __future__ import annotations

import argparse

import pyarrow as pa

import shmarrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="@shmarrow-example-requests")
    args = parser.parse_args()

    schema = pa.schema([("n", pa.int64())])
    with shmarrow.Producer(args.socket, schema) as producer:
        pool = producer.memory_pool

        def squares(request: bytes) -> pa.RecordBatch:
            count = int(request.decode())
            values = pa.array([i * i for i in range(count)], pa.int64(), memory_pool=pool)
            return pa.record_batch([values], names=["square"])

        producer.set_request_handler(squares)
        with shmarrow.Consumer(args.socket, read_timeout=30) as consumer:
            answer = consumer.request(b"5").read_all()
        print("squares:", answer.column("square").to_pylist())
        print(f"copied {producer.stats['bytes_copied']} bytes")


if __name__ == "__main__":
    main()
