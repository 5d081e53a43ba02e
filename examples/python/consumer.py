"""Read a stream: each batch's buffers are the producer's shared memory, not a copy.

    python examples/python/consumer.py --socket @weather
"""

from __future__ import annotations

import argparse

import shmarrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="@shmarrow-example")
    args = parser.parse_args()

    rows = 0
    # connect_timeout: the producer may still be starting; read_timeout: a silent one fails.
    with shmarrow.Consumer(args.socket, connect_timeout=30, read_timeout=30) as consumer:
        print(f"{consumer.mode} stream: {consumer.schema}")
        for batch in consumer:
            hot = [row["city"] for row in batch.to_pylist() if row["hot"]]
            print(f"batch of {batch.num_rows} rows; hot: {', '.join(hot) or 'none'}")
            rows += batch.num_rows
    print(f"{rows} rows")


if __name__ == "__main__":
    main()
