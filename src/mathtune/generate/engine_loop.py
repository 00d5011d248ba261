"""The scheduler that drives `LlamaEngine`: slots, admission, prompt-cache reuse, token choice.

Every step runs one engine forward over (a) one decode token for each running row and (b) the
prompt tokens of rows admitted into slots that finished rows freed in the previous step, so the
batch stays full until the queue is empty, and no step is spent on a finished row.
Two kinds of prompt work are never repeated:
- the token prefix that all prompts share (the chat template's system turn, a few-shot block) is
  run once and copied into each new slot;
- a prompt with several samples (self-consistency) is run once; its other samples copy its cache.
Token choice, stop handling and bookkeeping are the transformers loop's (`HFBackend`), so both
paths return the same `Generation`s for the same logits.
On a CPU with several threads, `run_engine` can split the prompts over several such loops, each with
its own cache (`cpu_workers` says how many): in forked processes of one thread each where
engine_procs.use_processes allows (Linux), else in threads sharing the CPU threads.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from mathtune.errors import UserError

_MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate pass
# Prompt tokens admitted per step: one huge prefill (200 GSM8K prompts, 13,600 tokens) ran at a
# third less throughput than steps of ~2,000 (activations no longer fit the caches), and rows start
# decoding sooner.
_PREFILL_TOKENS = 2048


def common_prefix(seqs: list[list[int]]) -> int:
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def kv_budget(device: Any) -> int:
    """Bytes the KV cache may take: 40% of free accelerator memory, or on a CPU 40% of available
    RAM and at most 8 GiB (SmolLM2-135M: 256 slots of a chat prompt + 256 tokens take 5.4 GB)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(0.4 * torch.cuda.mem_get_info(device)[0])
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(min(8 << 30, 0.4 * avail))


def cpu_workers(engine: Any, rows: int, threads: int) -> int:
    """How many decoding loops to run side by side, each on its own share of the CPU threads:
    `MATHTUNE_DECODE_WORKERS` when set, else one per thread while each keeps at least 64 rows.

    A small model's decode step on a CPU is a chain of short ops (30 layers x ~10), each split
    over all threads with a join after it, and the Python between the ops runs on one core while
    the others wait. Separate loops over separate rows have no joins, and one loop's Python
    overlaps the other's matmuls; a row's tokens do not depend on the loop it runs in. Measured on
    2 cores (bench/RESULTS.md, sixth session): 200 GSM8K items took 2-8% less time with two loops
    than with one, in fp32 and bf16; the full test set 10% less in fp32 and the same in bf16.
    With 64 rows or more, each loop's matmuls stay efficient."""
    env = os.environ.get("MATHTUNE_DECODE_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"MATHTUNE_DECODE_WORKERS={env!r}: expected a whole number of at least 1")
        return int(env)
    if getattr(engine.device, "type", "cpu") != "cpu" or threads < 2:
        return 1
    return max(1, min(threads, rows // 64))


class _Cancelled(Exception):
    """Raised inside a decoding loop when another loop failed or the caller was interrupted."""


class Claims:
    """The prompts of one call, handed to the decoding loops one prompt (all its rows) at a time as
    they have room, first come first served, so a loop that runs faster takes more. Dealt out in
    advance, equal shares ended far apart: on the full GSM8K test set the two loops' prompts held
    1% different token counts, yet one process finished 23 s (7%) before the other: the two
    cores of this VM do not run at one speed.

    Once every prompt is taken, the loops even out their rows (`plan_move`): how long a row runs is
    only known when it ends, so with first come alone one loop kept more of the long rows and ran
    alone at the end (200 GSM8K items, fp32: the two processes' loops took 87.1 and 75.3 s). A loop
    with more rows than another hands it some, cache included (`_Queue.give`). `count` holds each
    loop's rows: claimed (waiting or running) or on their way to it, and not finished.
    The counters live in shared memory and the rows travel through queues, so forked decoding
    processes (engine_procs) share them too. Which rows share a step depends on timing, so a row's
    result must not depend on its neighbours (llama_engine._one_row)."""

    MIN_GAP = 4  # rows; a move costs a copy of each row's cache (~10-20 ms for 300 positions of SmolLM2)

    def __init__(self, pending: list, loops: int = 1, context: Any = None):
        import multiprocessing as mp

        ctx = context or mp
        at: dict[int, int] = {}
        self.groups: list[list] = []  # rows of each prompt, in `pending`'s order
        for r in pending:
            if r.prompt_idx not in at:
                at[r.prompt_idx] = len(self.groups)
                self.groups.append([])
            self.groups[at[r.prompt_idx]].append(r)
        self._next = ctx.Value("q", 0)  # its lock guards the arrays too
        self.count = ctx.Array("q", loops, lock=False)
        self._open = ctx.Array("b", [1] * loops, lock=False)  # 0 once a loop has ended: it gets no more rows
        self.inboxes = [ctx.Queue() for _ in range(loops)] if loops > 1 else []

    def claim(self, loop: int = 0) -> list | None:
        """The next prompt's rows for loop `loop`, or None when every prompt has been taken."""
        with self._next.get_lock():
            i = self._next.value
            if i >= len(self.groups):
                return None
            self._next.value = i + 1
            self.count[loop] += len(self.groups[i])
        return self.groups[i]

    def release(self, loop: int, rows: int) -> None:
        """`rows` of loop `loop`'s rows have finished."""
        with self._next.get_lock():
            self.count[loop] -= rows

    def plan_move(self, loop: int, running: int) -> tuple[int, int] | None:
        """(other loop, n) when loop `loop`, running `running` rows, should hand n of them to
        another loop, which counts them as its own from now on; None while prompts are left to
        claim, while rows are waiting in or on their way to `loop`, or when the loops are within
        MIN_GAP rows of each other."""
        with self._next.get_lock():
            if self._next.value < len(self.groups) or self.count[loop] != running:
                return None
            others = [o for o in range(len(self.count)) if o != loop and self._open[o]]
            if not others:
                return None
            to = min(others, key=lambda o: self.count[o])
            gap = self.count[loop] - self.count[to]
            if gap < self.MIN_GAP:
                return None
            n = gap // 2
            self.count[loop] -= n
            self.count[to] += n
            return to, n

    def close(self) -> None:
        """Let go of the queues (after an error rows may be left in them; don't wait to flush)."""
        for q in self.inboxes:
            q.cancel_join_thread()
            q.close()

    def leave(self, loop: int) -> bool:
        """Whether loop `loop`, with nothing running or waiting, may end: not while rows are on
        their way to it. Once it has said yes, no rows are moved to it."""
        with self._next.get_lock():
            if self.count[loop] > 0:
                return False
            self._open[loop] = 0
            return True


class _Queue:
    """One loop's waiting rows for `_run`, as the list it otherwise gets (`pop(0)`, truth): refilled
    from `Claims` one prompt at a time when it runs empty. Also the loop's side of the moves of
    running rows between loops (`give`, `receive`)."""

    def __init__(self, claims: Claims, loop: int = 0):
        self.claims, self.loop, self.rows = claims, loop, []
        self._index: dict[int, int] | None = None  # id(row) -> its place in `pending`, for `give`

    def __bool__(self) -> bool:
        if not self.rows:
            self.rows.extend(self.claims.claim(self.loop) or [])
        return bool(self.rows)

    def pop(self, i: int) -> Any:
        if not self:
            raise IndexError("no rows left")
        return self.rows.pop(i)

    def release(self, rows: int) -> None:
        self.claims.release(self.loop, rows)

    def give(self, engine: Any, pending: list, active: list, running: set[int], last, pos, scratch: int) -> None:
        """Hand rows to a loop with fewer (Claims.plan_move): those in the highest slots, which
        joined last and have the most tokens left to run, with their caches."""
        plan = self.claims.plan_move(self.loop, len(running)) if not self.rows else None
        if plan is None:
            return
        to, n = plan
        if self._index is None:
            self._index = {id(r): i for i, r in enumerate(pending)}
        for s in sorted(running, reverse=True)[:n]:
            row, p = active[s], int(pos[s])
            gen = row.generator.get_state() if row.generator is not None else None
            # as raw bytes: numpy has no bf16, and a queue pickles arrays as one copy
            cache = [(_raw(k), _raw(v)) for k, v in engine.save_prefix(s, p)]
            state = (self._index[id(row)], row.out, row.seconds, gen, int(last[s]), p)
            self.claims.inboxes[to].put((state, cache))
            active[s] = None
            running.discard(s)
            pos[s] = scratch

    def leave(self) -> bool:
        """Whether the loop, with nothing running or waiting, may end (Claims.leave)."""
        return self.claims.leave(self.loop)

    def receive(self, engine: Any, pending: list, active: list, running: set[int], last, pos, wait: bool) -> None:
        """Take the rows other loops handed this one into free slots; with `wait`, wait up to
        half a second for the first (the loop has nothing else to do)."""
        import queue as queue_mod

        inbox = self.claims.inboxes[self.loop]
        dtype, device = engine.keys[0].dtype, engine.device
        while True:
            try:
                state, cache = inbox.get(timeout=0.5) if wait else inbox.get_nowait()
            except queue_mod.Empty:
                return
            wait = False
            i, out, seconds, gen, token, p = state
            row = pending[i]
            row.out, row.seconds = out, seconds
            if gen is not None:
                row.generator.set_state(gen)
            s = active.index(None)  # there is one: a loop is sent at most as many rows as the sender runs
            engine.load_prefix([(_unraw(k, dtype, device), _unraw(v, dtype, device)) for k, v in cache], s)
            active[s] = row
            running.add(s)
            last[s], pos[s] = token, p


def _raw(t: Any) -> Any:
    import torch

    return t.detach().cpu().contiguous().view(torch.uint8).numpy()


def _unraw(a: Any, dtype: Any, device: Any) -> Any:
    import torch

    return torch.from_numpy(a).view(dtype).to(device)


def run_engine(
    backend: Any,
    engine: Any,
    pending: list,
    finish,
    *,
    temperature,
    top_p,
    max_new_tokens,
    stop,
    workers: int = 1,
) -> None:
    """Generate every row of `pending`, calling `finish(row)` as each ends, on `workers` decoding
    loops: forked processes of one thread each where engine_procs.use_processes says so, else threads.
    - Rows of one prompt stay on one loop, so its samples reuse the prompt's cache; the loops claim
      prompts in `pending`'s order as they have room (`Claims`), so they end together.
    - Threads split torch's threads; when one loop ends, the others take its share.
    - `finish` is called under a lock. The first error (or Ctrl-C) stops every loop at its next
      step and is raised here; rows finished before it have been passed to `finish`."""
    import torch

    kw = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop)
    loops = min(max(1, workers), len({r.prompt_idx for r in pending}))
    if loops <= 1:
        _run(backend, engine, pending, finish, **kw)
        return

    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mathtune.generate.engine_procs import fork_context, run_in_processes, use_processes

    threads = torch.get_num_threads()
    engines = [engine] + [engine.replica() for _ in range(loops - 1)]
    kw["share"] = 1 / loops
    if use_processes(engine.device, threads, loops):
        claims = Claims(pending, loops, fork_context())
        try:
            run_in_processes(_run, backend, engines, pending, lambda i: _Queue(claims, i), finish, kw)
        finally:
            claims.close()
        return
    claims = Claims(pending, loops)
    lock = threading.Lock()
    cancel = threading.Event()
    live = [loops]

    def locked_finish(row) -> None:
        with lock:
            finish(row)

    def work(i: int, eng: Any) -> None:
        wanted = 0

        def each_step() -> None:
            nonlocal wanted
            if cancel.is_set():
                raise _Cancelled
            share = max(1, threads // live[0])  # this loop's part of the threads of the loops left
            if share != wanted:
                torch.set_num_threads(share)  # this thread's OpenMP setting only
                wanted = share

        try:
            with torch.inference_mode():
                _run(backend, eng, pending, locked_finish, queue=_Queue(claims, i), each_step=each_step, **kw)
        except BaseException:
            cancel.set()
            raise
        finally:
            with lock:
                live[0] -= 1

    try:
        with ThreadPoolExecutor(loops, thread_name_prefix="mathtune-decode") as pool:
            futures = [pool.submit(work, i, e) for i, e in enumerate(engines)]
            try:
                errors = [f.exception() for f in futures]
            except BaseException:  # Ctrl-C while waiting: the loops stop at their next step
                cancel.set()
                raise
        first = next((e for e in errors if e is not None and not isinstance(e, _Cancelled)), None)
        if first is not None:
            raise first
    finally:
        claims.close()
        torch.set_num_threads(threads)  # new threads start with the last value set in any thread


def _run(
    backend: Any,
    engine: Any,
    pending: list,
    finish,
    *,
    temperature,
    top_p,
    max_new_tokens,
    stop,
    share: float = 1.0,
    each_step=None,
    queue=None,
) -> None:
    """One decoding loop over `pending`'s rows, or, with `queue` (a `_Queue`), over the rows it
    hands out: `pending` then holds every row of the call (it sizes the cache and finds the shared
    prefix, alike in every loop). `share`: this loop's part of the slots and of the memory."""
    import torch

    from mathtune.generate.llama_engine import Prefill

    length = max(len(r.ids) for r in pending) + max_new_tokens + 1
    fit = int(kv_budget(engine.device) * share) // max(1, length * engine.kv_bytes_per_position())
    slots = max(1, min(math.ceil(backend.batch_size * share), len(pending), fit))
    engine.allocate(slots, length)
    scratch = engine.length - 1  # written by idle slots, never read by a live row
    device = engine.device
    tail = backend._stop_tail(stop)

    # The shared prefix: every prompt keeps at least one token of its own (its logits start it).
    shared = min(common_prefix([r.ids for r in pending]), min(len(r.ids) for r in pending) - 1)
    prefix = None
    if shared >= _MIN_SHARED_PREFIX and len({r.prompt_idx for r in pending}) > 1:
        engine.forward(None, None, [Prefill(0, pending[0].ids[:shared])])
        prefix = engine.save_prefix(0, shared)
        engine.share_prefix(prefix)  # every prompt of this call starts with it
    left = {}  # prompt index -> its rows still waiting, to know when a prompt's cache can go
    for r in pending:
        left[r.prompt_idx] = left.get(r.prompt_idx, 0) + 1
    prompt_cache: dict[int, tuple[Any, Any]] = {}  # prompt index -> (saved cache, last hidden state)

    active: list[Any] = [None] * slots
    running: set[int] = set()  # slots whose row has a token to feed
    last = torch.zeros(slots, dtype=torch.long, device=device)
    pos = torch.full((slots,), scratch, dtype=torch.long, device=device)
    moves = queue if isinstance(queue, _Queue) and len(queue.claims.inboxes) > 1 else None
    queue = list(pending) if queue is None else queue
    while queue or running or (moves is not None and not moves.leave()):
        if each_step is not None:
            each_step()
        t0 = time.perf_counter()
        if moves is not None:  # rows other loops handed over, cache included
            moves.receive(engine, pending, active, running, last, pos, wait=not running and not queue)
        # ---- admit waiting rows into free slots ----------------------------------------------
        prefills, fresh, copies, reused = [], [], [], []
        first_slot: dict[int, int] = {}
        budget = _PREFILL_TOKENS
        for s in range(slots):
            if not queue or budget <= 0:
                break
            if active[s] is not None:
                continue
            row = queue.pop(0)
            active[s] = row
            left[row.prompt_idx] -= 1
            if row.prompt_idx in prompt_cache:
                saved, state = prompt_cache[row.prompt_idx]
                engine.load_prefix(saved, s)
                reused.append((s, row, state))
            elif row.prompt_idx in first_slot:
                copies.append((s, row, first_slot[row.prompt_idx]))
            else:
                first_slot[row.prompt_idx] = s
                start = shared if prefix is not None else 0
                if prefix is not None:
                    engine.load_prefix(prefix, s)
                prefills.append(Prefill(s, row.ids[start:], start))
                budget -= len(row.ids) - start
                fresh.append((s, row))
        # ---- one forward: decode rows + new prompts ----------------------------------------
        n_dec = max(running) + 1 if running else 0
        hidden = None
        if n_dec or prefills:
            hidden = engine.forward(last[:n_dec] if n_dec else None, pos[:n_dec] if n_dec else None, prefills)
        # ---- gather (slot, row, hidden state) for every row that gets a token this step -----
        chosen_slots, chosen_rows, chosen_states = [], [], []
        for s in sorted(running):
            chosen_slots.append(s)
            chosen_rows.append(active[s])
            chosen_states.append(hidden[s])
        by_slot = {}
        for k, (s, row) in enumerate(fresh):
            by_slot[s] = hidden[n_dec + k]
            chosen_slots.append(s)
            chosen_rows.append(row)
            chosen_states.append(by_slot[s])
            if left[row.prompt_idx] > 0 and row.prompt_idx not in prompt_cache:
                prompt_cache[row.prompt_idx] = (engine.save_prefix(s, len(row.ids)), by_slot[s])
        for s, row, src in copies:
            engine.copy_slot(src, s, len(row.ids))
            chosen_slots.append(s)
            chosen_rows.append(row)
            chosen_states.append(by_slot[src])
        for s, row, state in reused:
            chosen_slots.append(s)
            chosen_rows.append(row)
            chosen_states.append(state)
        for idx in [i for i, n in left.items() if n == 0 and i in prompt_cache]:
            del prompt_cache[idx]
        if not chosen_rows:
            continue
        states = torch.stack(chosen_states)
        if temperature <= 0:
            tokens = engine.greedy(states).tolist()
        else:
            tokens = backend._choose(engine.logits(states), chosen_rows, temperature, top_p).tolist()
        # ---- bookkeeping ---------------------------------------------------------------------
        done = []
        for s, row, t in zip(chosen_slots, chosen_rows, tokens, strict=True):
            # A row also ends before its position reaches the scratch column (a prompt near the
            # model's context length).
            if backend._append(row, t, stop, tail, min(max_new_tokens, scratch - len(row.ids))):
                done.append(row)
                active[s] = None
                running.discard(s)
                pos[s] = scratch
            else:
                running.add(s)
                last[s] = t
                pos[s] = len(row.ids) + len(row.out) - 1
        if not queue and running:
            if moves is not None:
                moves.give(engine, pending, active, running, last, pos, scratch)
            if running:
                _compact(engine, active, running, last, pos, scratch)
        share = (time.perf_counter() - t0) / len(chosen_rows)
        for row in chosen_rows:
            row.seconds += share
        for row in done:
            finish(row)
        if done and moves is not None:
            moves.release(len(done))


def _compact(engine, active, running: set[int], last, pos, scratch: int) -> None:
    """With the queue empty, move the rows in the highest slots into the free low ones, so steps
    stop computing idle slots. Moving a row copies its cache once (about 1 ms for 300 positions
    of SmolLM2); an idle slot left in the range costs a row's share of every later step (about
    3 ms at 200 rows), so every hole is filled at once."""
    span = max(running) + 1
    free = [s for s in range(span) if active[s] is None]
    for src in sorted(running, reverse=True):
        if not free or free[0] > src:
            break
        dst = free.pop(0)
        engine.copy_slot(src, dst, int(pos[src]))
        active[dst], active[src] = active[src], None
        last[dst], pos[dst], pos[src] = last[src], pos[src], scratch
        running.discard(src)
        running.add(dst)
