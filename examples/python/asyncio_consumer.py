"""Read a stream in an asyncio program: ``async for`` waits in the event loop, not in a thread.

    python examples/python/producer.py --socket @weather &
    python examples/python/asyncio_consumer.py --socket @weather

A waiting ``async for`` can be cancelled (here by ``asyncio.wait_for``'s deadline) without losing
anything: the next iteration gets the batch that would have come.
"""

from __future__ import annotations

import argparse
import asyncio

import shmarrow


async def heartbeat(stop: asyncio.Event) -> int:
    """Runs beside the consumer, showing that the loop stays free while it waits."""
    beats = 0
    while not stop.is_set():
        beats += 1
        await asyncio.sleep(0.01)
    return beats


async def consume(address: str) -> int:
    rows = 0
    with shmarrow.Consumer(address, connect_timeout=30, read_timeout=30) as consumer:
        batches = aiter(consumer)
        while True:
            try:
                batch = await asyncio.wait_for(anext(batches), timeout=5)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:  # cancelled while waiting: nothing lost, wait again
                print("nothing for 5 s, still waiting")
                continue
            rows += batch.num_rows
            print(f"batch of {batch.num_rows} rows")
    return rows


async def main(address: str) -> None:
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(stop))
    rows = await consume(address)
    stop.set()
    print(f"{rows} rows; the event loop ran {await beating} heartbeats meanwhile")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="@shmarrow-example")
    asyncio.run(main(parser.parse_args().socket))
