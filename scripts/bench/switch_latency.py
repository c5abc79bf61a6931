#!/usr/bin/env python3
"""Latency of requests around a switch against between switches, for bench.sh.

A few keep-alive clients (beside wrk, which makes the load) send GET PATH one
after another for SECONDS and record when each request started and how long
its answer took. bench.sh's switcher writes a line "BEGIN|END <unix time>"
around each POST /switch into SWITCHES. A request started while a POST /switch
was being answered (BEGIN to END minus 50 ms) came "during the gate" (its
probes run on the candidate); one started from 50 ms before a switch's END to
250 ms after it came "at the swap" (the swap and the first requests on the new
release); the others "between switches". Prints a Markdown table of the three:
requests, p50, p99, max (ms).

Usage: switch_latency.py HOST PORT PATH SECONDS CLIENTS SWITCHES
"""

import asyncio
import sys
import time

BEFORE_S = 0.05
AFTER_S = 0.25
READ_LIMIT = 1 << 20


async def client(host, port, path, until, samples, errors):
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    reader = writer = None
    while time.time() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
            started = time.time()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            samples.append((started, time.time() - started))
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors.append(time.time())
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def windows(path):
    spans, begin = [], None
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 2:
                continue
            if parts[0] == "BEGIN":
                begin = float(parts[1])
            elif parts[0] == "END" and begin is not None:
                spans.append((begin, float(parts[1])))
                begin = None
    return spans


async def main():
    host, port, path, seconds, clients, switches = sys.argv[1:7]
    samples, errors = [], []
    until = time.time() + float(seconds)
    await asyncio.gather(
        *(client(host, int(port), path, until, samples, errors) for _ in range(int(clients)))
    )
    spans = windows(switches)
    gate, swap, between = [], [], []
    for started, took in samples:
        if any(end - BEFORE_S <= started <= end + AFTER_S for _, end in spans):
            swap.append(took * 1000)
        elif any(begin <= started < end - BEFORE_S for begin, end in spans):
            gate.append(took * 1000)
        else:
            between.append(took * 1000)
    print("| requests (a few clients beside wrk) | count | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    rows = (("during the gate", gate), ("at the swap", swap), ("between switches", between))
    for name, values in rows:
        print(
            f"| {name} | {len(values):,} | {percentile(values, 0.5):.2f} "
            f"| {percentile(values, 0.99):.2f} | {max(values, default=float('nan')):.2f} |"
        )
    def ratio(values):
        return percentile(values, 0.99) / percentile(between, 0.99) if values and between else float("nan")
    print(f"\np99 at the swap / between: {ratio(swap):.2f}; during the gate / between: "
          f"{ratio(gate):.2f}; over {len(spans)} switches; {len(errors)} requests failed.")


if __name__ == "__main__":
    asyncio.run(main())
