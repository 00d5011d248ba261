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
    cores of this VM do not run at one speed. The counter lives in shared memory, so forked
    decoding processes (engine_procs) claim from it too. Which rows share a step now depends on
    timing, so a row's result must not depend on its neighbours (llama_engine._one_row)."""

    def __init__(self, pending: list, context: Any = None):
        import multiprocessing as mp

        at: dict[int, int] = {}
        self.groups: list[list] = []  # rows of each prompt, in `pending`'s order
        for r in pending:
            if r.prompt_idx not in at:
                at[r.prompt_idx] = len(self.groups)
                self.groups.append([])
            self.groups[at[r.prompt_idx]].append(r)
        self._next = (context or mp).Value("q", 0)

    def claim(self) -> list | None:
        """The next prompt's rows, or None when every prompt has been taken."""
        with self._next.get_lock():
            i = self._next.value
            if i >= len(self.groups):
                return None
            self._next.value = i + 1
        return self.groups[i]


class _Queue:
    """One loop's waiting rows for `_run`, as the list it otherwise gets (`pop(0)`, truth): refilled
    from `Claims` one prompt at a time when it runs empty."""

    def __init__(self, claims: Claims):
        self.claims, self.rows = claims, []

    def __bool__(self) -> bool:
        if not self.rows:
            self.rows.extend(self.claims.claim() or [])
        return bool(self.rows)

    def pop(self, i: int) -> Any:
        if not self:
            raise IndexError("no rows left")
        return self.rows.pop(i)


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
        claims = Claims(pending, fork_context())
        run_in_processes(_run, backend, engines, pending, lambda: _Queue(claims), finish, kw)
        return
    claims = Claims(pending)
    lock = threading.Lock()
    cancel = threading.Event()
    live = [loops]

    def locked_finish(row) -> None:
        with lock:
            finish(row)

    def work(eng: Any) -> None:
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
                _run(backend, eng, pending, locked_finish, queue=_Queue(claims), each_step=each_step, **kw)
        except BaseException:
            cancel.set()
            raise
        finally:
            with lock:
                live[0] -= 1

    try:
        with ThreadPoolExecutor(loops, thread_name_prefix="mathtune-decode") as pool:
            futures = [pool.submit(work, e) for e in engines]
            try:
                errors = [f.exception() for f in futures]
            except BaseException:  # Ctrl-C while waiting: the loops stop at their next step
                cancel.set()
                raise
        first = next((e for e in errors if e is not None and not isinstance(e, _Cancelled)), None)
        if first is not None:
            raise first
    finally:
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
    queue = list(pending) if queue is None else queue
    while queue or running:
        if each_step is not None:
            each_step()
        t0 = time.perf_counter()
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
            _compact(engine, active, running, last, pos, scratch)
        share = (time.perf_counter() - t0) / len(chosen_rows)
        for row in chosen_rows:
            row.seconds += share
        for row in done:
            finish(row)


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
