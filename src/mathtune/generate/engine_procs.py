"""Decoding loops in forked processes, one CPU thread each (Linux).

`engine_loop.run_engine` can split the prompts over several decoding loops. In threads, the loops
share the interpreter lock: every op dispatch, C-kernel call and scheduler step of one loop waits
while the other runs Python, and a decode step of a small model is ~300 such calls. Sampled with
py-spy on 2 cores (400 GSM8K items, bf16), the decode threads were waiting for the lock in 6% of
their samples; the full test set in bf16 took 326.7 s in threads and 313.2 s in processes, an hour
apart (bench/RESULTS.md, eighth session).

A forked child shares the parent's weights (copy-on-write; they are only read) and builds its own
KV cache. It sends each finished row back through a pipe; the parent passes it to `finish`, so
records are written by one process, in the order rows end, as with threads.

Limits, and why:
- one thread per child: GNU OpenMP (torch's) cannot start a thread pool in a child forked from a
  process that has used its own; a child with 2 threads hangs in its first parallel region. So
  `use_processes` asks for exactly one thread per loop, and threads are used otherwise;
- fork only (Linux): macOS' system libraries are not fork-safe, and Windows has no fork;
- a child dies with its parent (PR_SET_PDEATHSIG), and it never holds the parent's directory
  locks (locks.py closes its copies at fork), so a killed evaluation can be resumed at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

from mathtune.errors import UserError


def use_processes(device: Any, threads: int, loops: int) -> bool:
    """Whether `loops` decoding loops over `threads` CPU threads should run as forked processes:
    `MATHTUNE_DECODE_PROCESSES` (0 or 1) when set, else on Linux when each loop gets one thread."""
    env = os.environ.get("MATHTUNE_DECODE_PROCESSES", "").strip()
    if env:
        if env not in ("0", "1"):
            raise UserError(f"MATHTUNE_DECODE_PROCESSES={env!r}: expected 0 or 1")
        return env == "1" and _can_fork()
    return loops > 1 and threads <= loops and getattr(device, "type", "cpu") == "cpu" and _can_fork()


def _can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def fork_context() -> Any:
    import multiprocessing as mp

    return mp.get_context("fork")


def run_in_processes(run, backend: Any, engines: list, pending: list, make_queue, finish, kw: dict) -> None:
    """`run(backend, engine, pending, report, queue=make_queue(i), **kw)` (engine_loop._run) for
    the i-th engine in its own forked process, the queues handing out `pending`'s rows (engine_loop.Claims,
    whose counter is shared); `finish(row)` is called here, in this process, as rows end. The first
    error in a child (or Ctrl-C here) stops every child and is raised; rows finished before it have
    been passed to `finish`."""
    from multiprocessing.connection import wait

    ctx = fork_context()
    children = []
    for i, engine in enumerate(engines):
        recv, send = ctx.Pipe(duplex=False)
        args = (run, backend, engine, pending, lambda i=i: make_queue(i), send, kw, os.getpid())
        children.append((ctx.Process(target=_child, args=args, daemon=True), recv, send))
    sys.stdout.flush()
    sys.stderr.flush()
    # tokenizers warns at fork when it has used its thread pool; the children only decode a few
    # tokens at a time, so they need none (restored at once: the setting is read at fork)
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        for process, _, send in children:
            process.start()
            send.close()  # the child's end: EOF here once the child is gone
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        live = {recv: process for process, recv, _ in children}
        while live:
            for conn in wait(list(live)):
                process = live[conn]
                try:
                    message = conn.recv()
                except EOFError:  # died without a word: killed (out of memory?) or crashed
                    process.join()
                    raise RuntimeError(f"a decoding process ended abruptly ({_exit_text(process.exitcode)})") from None
                if message[0] == "row":
                    _, i, out, how, stop_hit, seconds = message
                    row = pending[i]
                    row.out, row.finish, row.stop_hit, row.seconds = out, how, stop_hit, seconds
                    finish(row)
                elif message[0] == "done":
                    del live[conn]
                else:
                    raise message[1]
    finally:
        for process, recv, _ in children:
            if process.is_alive():
                process.kill()
            process.join()
            recv.close()


def _child(run, backend: Any, engine: Any, pending: list, make_queue, send, kw: dict, parent: int) -> None:
    import torch

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    torch.set_num_threads(1)  # before any parallel region: see the module's docstring
    index = {id(row): i for i, row in enumerate(pending)}

    def report(row) -> None:
        send.send(("row", index[id(row)], row.out, row.finish, row.stop_hit, row.seconds))

    try:
        with torch.inference_mode():
            run(backend, engine, pending, report, queue=make_queue(), **kw)
        send.send(("done",))
    except BaseException as e:  # noqa: BLE001 - everything goes to the parent, which raises it
        with contextlib.suppress(Exception):
            send.send(("error", _portable(e)))
    finally:
        send.close()


def _portable(e: BaseException) -> BaseException:
    """`e` itself where the parent can rebuild it from the pipe (built-in exceptions and mathtune's
    UserError), else a RuntimeError that carries its type and text."""
    if type(e).__module__ == "builtins" or isinstance(e, UserError):
        return e
    return RuntimeError(f"in a decoding process: {type(e).__name__}: {e}")


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this child when its parent dies (SIGKILL of an evaluation included), so no
    orphan goes on computing; if the parent is already gone, leave now."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
