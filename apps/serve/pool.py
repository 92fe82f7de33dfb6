"""effnet-serve's interpreters: N worker processes with one Classifier each, each reached over a
socket pair the event loop reads and writes as a stream (no threads, no blocking writes).

Processes rather than threads: requests then use every core for decoding as well as
inference, and an image that crashes a native decoder takes down one worker, which is
replaced, not the server.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import sys
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import worker as worker_module

# Jobs a worker holds at once: the one it runs and the next, already in its socket, so that
# it never waits for the server (busy with HTTP on the same cores) between two images.
DEPTH = 2
RESPAWN_DELAYS = (0.5, 1, 2, 5, 10, 30)    # seconds between attempts to replace a lost worker


class Busy(Exception):
    """Every worker is busy and the queue is full (503)."""


class WorkerLost(Exception):
    """The worker running this request stopped (500); it is being replaced."""


class StartError(Exception):
    """A worker could not open the model."""


@dataclass
class _Worker:
    slot: int
    process: multiprocessing.process.BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: deque = field(default_factory=deque)   # (job, future) sent, oldest (running) first
    job: int = 0                   # the last job number given (0: the ready message)
    ready: bool = False
    listener: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class Pool:
    def __init__(self, model: str, options: dict, size: int, max_queue: int, digest: str | None,
                 stuck_after: float = 60):
        self.model, self.options, self.size, self.max_queue = model, options, size, max_queue
        self.digest = digest
        self.stuck_after = stuck_after      # seconds past a timed-out request before its worker is killed
        self.waiting = 0            # requests waiting for a place in a worker
        self.held = 0               # requests admitted (reading a body, queued or running)
        self.restarts = 0
        self.workers: dict[int, _Worker] = {}
        self._free: asyncio.Semaphore | None = None     # free job places over all workers
        self._closing = False
        self._tasks: set = set()        # replacements under way (kept referenced)
        self._context = multiprocessing.get_context("spawn")   # the parent has threads: no fork

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; StartError (with the model's complaint) if one cannot."""
        self._free = asyncio.Semaphore(0)
        results = await asyncio.gather(*(self._spawn(slot) for slot in range(self.size)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close()
            raise StartError(str(failures[0]))

    async def _spawn(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._context.Pipe()        # a socket pair (duplex)
        process = self._context.Process(target=worker_module.main, name=f"effnet-serve-worker-{slot}",
                                        args=(child, self.model, self.options), daemon=True)
        process.start()
        child.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(parent.fileno()))
        parent.close()
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        w = _Worker(slot, process, reader, writer)
        ready = loop.create_future()
        w.pending.append((0, ready))
        self.workers[slot] = w
        w.listener = loop.create_task(self._listen(w))
        try:
            message = await ready
        except WorkerLost:
            await asyncio.to_thread(_reap, process)
            raise StartError(f"the worker exited while opening the model (exit code {process.exitcode})") from None
        problem = message.get("error") or (message.get("digest") != self.digest and
                                           f"{self.model}: the file changed on disk since the server started")
        if problem:
            self._drop(w)
            await asyncio.to_thread(_reap, process)
            raise StartError(problem)
        w.ready = True
        for _ in range(DEPTH):
            self._free.release()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        workers = list(self.workers.values())
        for w in workers:
            self._drop(w)       # closing the socket is the worker's signal to exit
        await asyncio.gather(*(asyncio.to_thread(_reap, w.process) for w in workers))

    def _drop(self, w: _Worker) -> None:
        if self.workers.get(w.slot) is w:
            del self.workers[w.slot]
        w.writer.close()
        if w.listener is not None and w.listener is not asyncio.current_task():
            w.listener.cancel()

    # -- replies and losses ---------------------------------------------------------------------
    async def _listen(self, w: _Worker) -> None:
        """Resolve each job's future with the worker's reply, in order, until it goes."""
        try:
            while True:
                size = int.from_bytes(await w.reader.readexactly(worker_module.LENGTH), "little")
                message = json.loads(await w.reader.readexactly(size))
                if not w.pending:
                    raise ValueError("a reply nobody asked for")
                job, reply = w.pending.popleft()
                if not reply.done():
                    reply.set_result(message)
                if job:
                    self._free.release()
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, OSError, ValueError):
            self._lost(w)

    def _lost(self, w: _Worker) -> None:
        self._drop(w)
        while w.pending:        # (the job queued behind the one that crashed it goes too)
            _, reply = w.pending.popleft()
            if not reply.done():
                reply.set_exception(WorkerLost("the worker handling this request stopped; "
                                               "it is being replaced"))
        if w.ready and not self._closing:       # (one that fails to start is its starter's to handle)
            self.restarts += 1
            task = asyncio.get_running_loop().create_task(self._replace(w))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, w: _Worker) -> None:
        await asyncio.to_thread(_reap, w.process)       # its socket closed: it is exiting
        code = w.process.exitcode
        how = f"was killed by signal {-code}" if code and code < 0 else f"exited with code {code}"
        print(f"effnet-serve: worker {w.slot} (pid {w.pid}) {how}; starting a new one",
              file=sys.stderr, flush=True)
        for delay in RESPAWN_DELAYS + (RESPAWN_DELAYS[-1],) * 1000:
            if self._closing:
                return
            try:
                await self._spawn(w.slot)
                return
            except (StartError, OSError) as e:
                print(f"effnet-serve: worker {w.slot} could not start: {e}; retrying in {delay:g} s",
                      file=sys.stderr, flush=True)
            await asyncio.sleep(delay)

    # -- requests -------------------------------------------------------------------------------
    def queued(self) -> int:
        """Requests not yet being classified: waiting for a place, or in a worker's socket."""
        return self.waiting + sum(max(0, len(w.pending) - 1) for w in self.workers.values() if w.ready)

    def running(self) -> int:
        """Requests a worker is classifying now."""
        return sum(1 for w in self.workers.values() if w.ready and w.pending and w.pending[0][0])

    def full(self) -> bool:
        return self.held >= self.size + self.max_queue

    @contextmanager
    def admission(self):
        """Hold one of the size + max_queue places, or raise Busy: this bounds the queue."""
        if self.full():
            raise Busy()
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1

    async def classify(self, data: bytes, request: dict) -> dict:
        """The worker's reply (see worker.py) for one image. The caller bounds the wait
        (asyncio.timeout): a job cancelled while its worker runs it is dropped when it
        comes back, and a worker that does not come back is replaced."""
        loop = asyncio.get_running_loop()
        w = await self._place()
        w.job += 1
        job, reply = w.job, loop.create_future()
        w.pending.append((job, reply))
        w.writer.writelines(worker_module.request_frame(request, data))
        try:
            try:
                await w.writer.drain()       # back-pressure, when the worker's socket is full
            except (ConnectionError, OSError):
                pass        # the worker is gone: _lost fails `reply` as its socket closes
            return await reply
        except asyncio.CancelledError:
            loop.call_later(self.stuck_after, self._kill_if_stuck, w, job)
            raise

    async def _place(self) -> _Worker:
        """A live worker with a free place, the least loaded."""
        self.waiting += 1
        try:
            while True:
                await self._free.acquire()
                open_ = [w for w in self.workers.values() if w.ready and len(w.pending) < DEPTH]
                if open_:       # (else the place was a lost worker's: try again)
                    return min(open_, key=lambda w: len(w.pending))
        finally:
            self.waiting -= 1

    def _kill_if_stuck(self, w: _Worker, job: int) -> None:
        if self.workers.get(w.slot) is w and w.pending and w.pending[0][0] == job:
            print(f"effnet-serve: worker {w.slot} is stuck ({self.stuck_after:g} s past a request's "
                  "timeout); replacing it", file=sys.stderr, flush=True)
            w.process.kill()        # its socket closes: _lost replaces it


def _reap(process) -> None:
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
