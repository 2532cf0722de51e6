"""Python uthreads of scenarios/pthread_basics.toml: a mutex-protected counter and a bounded queue.

Everything a run shares (the Mutexes, the CondVars, the queue) is created by
`main` inside the run and handed to the threads it creates: this module is
imported once per process and reused by every run, so it keeps no state.
"""

from __future__ import annotations

from collections import deque

from akaros_sim.kernel import SYS_write
from akaros_sim.parlib import (
    CondVar,
    Mutex,
    compute,
    current_sim,
    syscall,
    uthread_create,
    uthread_join,
    uthread_sched_yield,
)

CRITICAL_NS = 300  # work done while holding the counter mutex: long enough for the others to queue up
OUTSIDE_NS = 50  # work done between two increments
PRODUCE_NS = 100  # the producer is fast...
CONSUME_NS = 400  # ... the consumer slow, so the queue fills up and the producer waits on not_full


def say(text: str) -> None:
    """write(1, text) through the guest's scratch buffer (the write copies it out at once)."""
    sim = current_sim()
    buf = sim.programs["main"].symbol("pybuf")
    data = text.encode()
    sim.mem.write(buf, data)
    syscall(SYS_write, 1, buf, len(data))


def main(workers: int, iters: int, items: int, capacity: int) -> int:
    """Start the counter workers and a producer/consumer pair, join them all and check what they return."""
    counter = current_sim().programs["main"].symbol("counter")
    lock = Mutex("counter")
    threads = [uthread_create(worker, lock, counter, iters, name=f"w{i}") for i in range(workers)]
    qlock, not_empty, not_full = Mutex("queue"), CondVar("not_empty"), CondVar("not_full")
    queue: deque = deque()
    prod = uthread_create(producer, qlock, not_empty, not_full, queue, items, capacity, name="producer")
    cons = uthread_create(consumer, qlock, not_empty, not_full, queue, name="consumer")
    done = [uthread_join(t) for t in threads]
    if done != [iters] * workers:
        raise AssertionError(f"workers returned {done}, expected {[iters] * workers}")
    produced, consumed = uthread_join(prod), uthread_join(cons)
    if produced != items or consumed != items * (items + 1) // 2:
        raise AssertionError(f"producer returned {produced}, consumer {consumed}")
    say(f"main: {workers} workers did {sum(done)} increments; consumer summed {consumed}\n")
    return sum(done) + consumed


def worker(lock: Mutex, counter: int, iters: int) -> int:
    """Increment the guest counter `iters` times under `lock`, with a slow read-modify-write."""
    mem = current_sim().mem
    for _ in range(iters):
        with lock:
            value = mem.read_u64(counter)
            compute(CRITICAL_NS)  # without the mutex, another worker would read the same value here
            mem.write_u64(counter, value + 1)
        compute(OUTSIDE_NS)
        uthread_sched_yield()
    return iters


def producer(lock: Mutex, not_empty: CondVar, not_full: CondVar, queue: deque, items: int, capacity: int) -> int:
    """Put 1..items into the bounded queue, then None to say it is over."""
    for item in [*range(1, items + 1), None]:
        with lock:
            while len(queue) >= capacity:
                not_full.wait(lock)
            queue.append(item)
            not_empty.signal()
        compute(PRODUCE_NS)
    return items


def consumer(lock: Mutex, not_empty: CondVar, not_full: CondVar, queue: deque) -> int:
    """Take items until None; return their sum."""
    total = 0
    while True:
        with lock:
            while not queue:
                not_empty.wait(lock)
            item = queue.popleft()
            not_full.signal()
        if item is None:
            return total
        compute(CONSUME_NS)
        total += item
