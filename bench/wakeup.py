"""What a wake-up from idle costs on this machine: ``python -m bench.wakeup``.

An asyncio loop sleeps to a fixed schedule (100 to 3,000 wake-ups per second) and, after each
wake-up, either does nothing or a fixed piece of work (300 dictionary reads spread over a
large list). It prints the CPU time per wake-up (getrusage, user + system) and how long the
work itself took by the wall clock. On a machine where waking is cheap, both stay flat
across the rates; on a virtual machine they can grow several times as wake-ups get rarer,
which is why a daemon with thousands of sparse probes pays more per round trip than one
with dense probes, and why `send_alignment` (fewer, fuller wake-ups) saves CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from .common import cpu_seconds

RATES = (100, 333, 1000, 3000)


async def measure(rate: float, work: int, seconds: float) -> tuple[float, float]:
    """CPU us per wake-up, and wall-clock us of the work done after each wake-up."""
    data = [{"a": i} for i in range(200_000)]
    loop = asyncio.get_running_loop()
    n = 0
    work_ns = 0
    cpu0 = cpu_seconds()
    due = start = loop.time()
    while loop.time() - start < seconds:
        due += 1.0 / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        n += 1
        t = time.perf_counter_ns()
        total = 0
        for i in range(work):
            total += data[(i * 7919) % 200_000]["a"]
        work_ns += time.perf_counter_ns() - t
    return (cpu_seconds() - cpu0) / n * 1e6, work_ns / n / 1e3


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.wakeup", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per rate and work size")
    p.add_argument("--work", type=int, default=300, help="dictionary reads after a wake-up")
    args = p.parse_args()
    print("| wake-ups/s | CPU us per wake-up, no work | CPU us, with work | work itself, us |")
    print("|---|---|---|---|")
    for rate in RATES:
        bare, _ = asyncio.run(measure(rate, 0, args.seconds))
        busy, work_us = asyncio.run(measure(rate, args.work, args.seconds))
        print(f"| {rate} | {bare:.0f} | {busy:.0f} | {work_us:.0f} |")


if __name__ == "__main__":
    main()
