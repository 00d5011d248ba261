"""Generation backends: the HF decode loop against transformers' generate, stops, seeds, vLLM guard."""

from __future__ import annotations

import importlib.util

import pytest

from mathtune.errors import UserError
from mathtune.generate.base import derive_seed, make_backend, sample_seed, truncate_at_stop

QUESTIONS = [
    "Tom has 3 apples.",
    "What is 2+2? Explain in detail, step by step, please, and give the final answer.",
    "Sue reads 12 pages a day. How many pages in a week?",
    "x",
    "A train leaves at 3 pm and travels 60 miles per hour for two and a half hours. How far?",
]


@pytest.fixture
def one_thread():
    # The test machine's cores are shared; 1 thread avoids OpenMP spin-waits on tiny matmuls.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def chaotic(tiny_model_dir):
    """The tiny Llama with large random weights: greedy output varies from token to token (the
    fixture's small init makes it repeat one token), so a wrong position or cache shows up."""
    import torch

    from mathtune.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, tok


ENGINES = ["transformers", "fast"]


def _prompts(tok):
    from mathtune.prompts import build_prompt

    return [build_prompt("chat", q, tok) for q in QUESTIONS]


@pytest.mark.parametrize(
    "text,stop,expected",
    [
        ("abc Q: next", ["Q:"], ("abc ", True)),
        ("abc", ["Q:"], ("abc", False)),
        ("a\n\n\nb Q:", ["Q:", "\n\n\n"], ("a", True)),  # earliest stop wins, not the first listed
        ("", ["Q:"], ("", False)),
        ("abc", ["", "c"], ("ab", True)),  # an empty stop string is ignored
    ],
)
def test_truncate_at_stop(text, stop, expected):
    assert truncate_at_stop(text, stop) == expected


def test_seeds_are_stable_and_distinct():
    assert derive_seed(42, "test-0") == derive_seed(42, "test-0")
    assert len({derive_seed(42, f"test-{i}") for i in range(100)} | {derive_seed(43, "test-0")}) == 101
    s = derive_seed(42, "test-0")
    assert len({sample_seed(s, j) for j in range(8)}) == 8


@pytest.mark.parametrize("engine,batch_size", [("transformers", 2), ("fast", 2), ("fast", 8)])
def test_greedy_matches_transformers_generate(chaotic, one_thread, engine, batch_size, monkeypatch):
    """Refill, row dropping and cache trimming must not change greedy output. Rows are made to end
    at different steps (two tokens act as EOS), so a small batch over prompts of different lengths
    drops finished rows and admits new prompts into the running cache; with batch 8 over 10
    prompts the fast engine also compacts its slots once the queue is empty."""
    import torch

    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    prompts = _prompts(tok)
    prompts += [p.replace("?", " now?") for p in prompts]

    def reference(p, eos):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
            )
        return out[0, enc["input_ids"].shape[1] :].tolist()

    plain = [reference(p, tok.eos_token_id) for p in prompts[:5]]
    eos = [plain[0][2], plain[2][5]]
    be = HFBackend(model, tok, batch_size=batch_size, engine=engine)
    be.eos_ids = set(eos)
    moved = []
    if engine == "fast":
        from mathtune.generate.llama_engine import LlamaEngine

        copy = LlamaEngine.copy_slot
        monkeypatch.setattr(LlamaEngine, "copy_slot", lambda self, *a: (moved.append(a), copy(self, *a))[1])
    got = be.generate(prompts, max_new_tokens=10)
    assert bool(moved) or batch_size != 8  # batch 8: slots were compacted (n=1: no sample copies)
    lengths = set()
    for p, gens in zip(prompts, got, strict=True):
        ref = reference(p, eos)
        ended = ref[-1] in eos
        assert gens[0].text == tok.decode(ref[:-1] if ended else ref, skip_special_tokens=False)
        assert gens[0].tokens == len(ref)
        assert gens[0].finish_reason == ("stop" if ended else "length")
        lengths.add(len(ref))
    assert len(lengths) >= 3  # rows really ended at different steps


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_size_does_not_change_greedy_output(chaotic, one_thread, engine):
    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    prompts = _prompts(tok)
    a = HFBackend(model, tok, batch_size=1, engine=engine).generate(prompts, max_new_tokens=8)
    b = HFBackend(model, tok, batch_size=4, engine=engine).generate(prompts, max_new_tokens=8)
    assert [g[0].text for g in a] == [g[0].text for g in b]


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_string_truncates_and_ends_generation(chaotic, one_thread, engine):
    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    be = HFBackend(model, tok, batch_size=2, engine=engine)
    prompts = _prompts(tok)[:2]
    full = be.generate(prompts, max_new_tokens=12)
    text = full[0][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a piece from the middle of the output
    cut = be.generate(prompts, max_new_tokens=12, stop=[stop])
    assert cut[0][0].text == text[: text.find(stop)]
    assert cut[0][0].finish_reason == "stop"
    assert cut[0][0].tokens < 12
    # The other prompt is unaffected unless the stop occurs in its output too.
    other = full[1][0].text
    if stop not in other:
        assert cut[1][0].text == other


@pytest.mark.parametrize("engine", ENGINES)
def test_eos_ends_generation_and_is_not_in_the_text(chaotic, one_thread, engine):
    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    be = HFBackend(model, tok, batch_size=2, engine=engine)
    prompts = _prompts(tok)[:1]
    first = tok(be.generate(prompts, max_new_tokens=3)[0][0].text, add_special_tokens=False)["input_ids"]
    be.eos_ids = {first[1]}  # make the second greedy token the EOS
    g = be.generate(prompts, max_new_tokens=12)[0][0]
    assert g.finish_reason == "stop" and g.tokens == 2
    assert g.text == tok.decode(first[:1])


@pytest.mark.parametrize("engine", ENGINES)
def test_sampling_is_seeded_per_item_not_per_batch(chaotic, one_thread, engine):
    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    prompts = _prompts(tok)
    seeds = [derive_seed(7, f"test-{i}") for i in range(len(prompts))]
    kw = dict(n=2, temperature=1.0, top_p=0.95, max_new_tokens=8)
    a = HFBackend(model, tok, batch_size=3, engine=engine).generate(prompts, seeds=seeds, **kw)
    # A resumed run sees a subset of items, in other batches.
    b = HFBackend(model, tok, batch_size=1, engine=engine).generate(prompts[2:], seeds=seeds[2:], **kw)
    assert [[g.text for g in r] for r in a[2:]] == [[g.text for g in r] for r in b]
    assert a[0][0].text != a[0][1].text  # the samples of one item differ
    c = HFBackend(model, tok, batch_size=3, engine=engine).generate(prompts, seeds=[s + 1 for s in seeds], **kw)
    assert [g.text for r in a for g in r] != [g.text for r in c for g in r]


@pytest.mark.parametrize("engine", ENGINES)
def test_on_done_reports_each_prompt_once_with_all_samples(chaotic, one_thread, engine):
    from mathtune.generate.hf import HFBackend

    model, tok = chaotic
    seen = []
    res = HFBackend(model, tok, batch_size=2, engine=engine).generate(
        _prompts(tok), n=2, temperature=0.8, max_new_tokens=4, seeds=[1, 2, 3, 4, 5],
        on_done=lambda i, gens: seen.append((i, len(gens))),
    )  # fmt: skip
    assert sorted(seen) == [(i, 2) for i in range(5)]
    assert all(g.seconds > 0 for r in res for g in r)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_a_clear_user_error():
    with pytest.raises(UserError, match="vllm is not installed"):
        make_backend("vllm", model_path="x")


def test_unknown_backend():
    with pytest.raises(UserError, match="unknown"):
        make_backend("tgi")


def test_merged_cache_gives_the_logits_of_separate_decoding(tiny_model_dir, one_thread):
    """Refill merges new prefills (left-padded to a common width) into the running cache and
    compaction drops finished rows; two decode steps after each must give the logits of every row
    decoded on its own. The small-init tiny model is used here: its attention is near uniform, so
    attending to one padding column visibly changes the logits."""
    import torch

    from mathtune.generate.hf import _KV, HFBackend, _Row
    from mathtune.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir))
    be = HFBackend(model, tok, batch_size=4)
    rows = [_Row(i, 0, tok(p, add_special_tokens=False)["input_ids"], 0) for i, p in enumerate(_prompts(tok)[:3])]
    assert len(rows[1].ids) > len(rows[2].ids) > len(rows[0].ids)
    toks = torch.tensor([[11, 21], [12, 22], [13, 23]])
    none = torch.tensor([], dtype=torch.long)

    def fresh(rs):
        new = be._prefill(rs)
        return _KV.rebuild(None, none, new, reserve=3), new[2]

    def two_steps(kv, pos, order):
        out = []
        for s in range(2):
            kv.valid[:, kv.n] = True
            o = model(input_ids=toks[order, s][:, None], attention_mask=kv.additive_mask(),
                      position_ids=(pos + s)[:, None], use_cache=True,
                      **{be._cache_kw: kv.as_cache(model.config)})  # fmt: skip
            kv.n += 1
            out.append(o.logits[:, -1].float())
        return torch.stack(out, 1)  # [rows, steps, vocab]

    with torch.inference_mode():
        alone = [two_steps(*fresh([r]), [i])[0] for i, r in enumerate(rows)]
        cases = []
        # the longest prompt runs first, two shorter ones are merged in
        kv, pos = fresh(rows[1:2])
        new = be._prefill([rows[0], rows[2]])
        kv = _KV.rebuild(kv, torch.tensor([0]), new, reserve=3)
        cases.append((two_steps(kv, torch.cat([pos, new[2]]), [1, 0, 2]), [1, 0, 2]))
        # the other way round: the running cache is the narrower one
        kv, pos = fresh(rows[0:1])
        new = be._prefill(rows[1:2])
        kv = _KV.rebuild(kv, torch.tensor([0]), new, reserve=3)
        cases.append((two_steps(kv, torch.cat([pos, new[2]]), [0, 1]), [0, 1]))
        # compaction: the long row finished; the padding-only columns go with it
        kv, pos = fresh([rows[0], rows[1]])
        kv = _KV.rebuild(kv, torch.tensor([0]), None, reserve=3)
        assert kv.n == len(rows[0].ids) and bool(kv.valid[:, : kv.n].all())
        cases.append((two_steps(kv, pos[:1], [0]), [0]))
    for got, order in cases:
        for g, i in zip(got, order, strict=True):
            assert torch.allclose(g, alone[i], atol=1e-4, rtol=1e-4)


def test_decoding_loops_in_threads_give_each_prompt_the_same_generations(chaotic, one_thread, monkeypatch):
    import threading

    import torch

    from mathtune.generate.hf import HFBackend

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "0")
    model, tok = chaotic
    prompts = _prompts(tok) * 2  # 10 prompts: several per loop
    seeds = [derive_seed(3, f"p{i}") for i in range(len(prompts))]
    runs = {}
    for workers in (1, 2, 3):
        where: dict[int, str] = {}
        be = HFBackend(model, tok, batch_size=4, engine="fast", workers=workers)
        for kw in (dict(max_new_tokens=9), dict(n=2, temperature=1.0, max_new_tokens=9)):

            def note(i, gens, seen=where):
                seen[i] = threading.current_thread().name

            res = be.generate(prompts, seeds=seeds, on_done=note, **kw)
            runs.setdefault(workers, []).append([[(g.text, g.tokens, g.finish_reason) for g in r] for r in res])
        assert len(where) == len(prompts)
        assert len(set(where.values())) == workers  # that many loops really ran
        assert torch.get_num_threads() == 1  # the caller's thread count is back
    assert runs[2] == runs[1] and runs[3] == runs[1]


def test_an_error_in_one_decoding_loop_stops_the_others_and_is_raised(chaotic, one_thread, monkeypatch):
    import threading

    from mathtune.generate.hf import HFBackend
    from mathtune.generate.llama_engine import LlamaEngine

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "0")
    model, tok = chaotic
    be = HFBackend(model, tok, batch_size=4, engine="fast", workers=2)
    steps: dict[str, int] = {}
    forward = LlamaEngine.forward

    def counting(self, *a, **k):
        name = threading.current_thread().name
        steps[name] = steps.get(name, 0) + 1
        if steps[name] == 3 and name.endswith("_0"):
            raise RuntimeError("loop 0 failed")
        return forward(self, *a, **k)

    monkeypatch.setattr(LlamaEngine, "forward", counting)
    with pytest.raises(RuntimeError, match="loop 0 failed"):
        be.generate(_prompts(tok) * 2, max_new_tokens=60)
    assert len(steps) == 2
    assert max(steps.values()) < 20  # the other loop stopped too, long before its 60 tokens


def _log_steps(monkeypatch, log, fail=None):
    """Patch the engine's forward to append this process's pid to `log` at every step; `fail(step)`
    may raise or exit in the process whose step it is. Forked children inherit the patch."""
    import os

    from mathtune.generate.llama_engine import LlamaEngine

    forward = LlamaEngine.forward

    def logged(self, *a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if fail is not None:
            fail(log.read_text().split().count(str(os.getpid())))
        return forward(self, *a, **k)

    monkeypatch.setattr(LlamaEngine, "forward", logged)


def test_decoding_loops_in_processes_give_each_prompt_the_same_generations(chaotic, one_thread, monkeypatch,
                                                                           tmp_path):  # fmt: skip
    import os

    from mathtune.generate.hf import HFBackend

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "1")
    model, tok = chaotic
    prompts = _prompts(tok) * 6  # enough that every child claims some before the first is done
    seeds = [derive_seed(3, f"p{i}") for i in range(len(prompts))]
    runs = {}
    log = tmp_path / "steps"
    _log_steps(monkeypatch, log)
    for workers in (1, 2, 3):
        log.write_text("")
        done_in: dict[int, int] = {}
        be = HFBackend(model, tok, batch_size=4, engine="fast", workers=workers)
        for kw in (dict(max_new_tokens=9), dict(n=2, temperature=1.0, max_new_tokens=9)):
            res = be.generate(prompts, seeds=seeds, on_done=lambda i, g, d=done_in: d.setdefault(i, os.getpid()), **kw)
            runs.setdefault(workers, []).append([[(g.text, g.tokens, g.finish_reason) for g in r] for r in res])
        assert set(done_in.values()) == {os.getpid()}  # results come back to the caller's process
        loops = set(log.read_text().split())
        if workers == 1:
            assert loops == {str(os.getpid())}
        else:  # each loop ran in its own child, 2 calls x `workers` children
            assert len(loops) == 2 * workers and str(os.getpid()) not in loops
    assert runs[2] == runs[1] and runs[3] == runs[1]


def test_an_error_in_one_decoding_process_stops_the_others_and_is_raised(chaotic, one_thread, monkeypatch, tmp_path):
    import os
    import time

    from mathtune.generate.hf import HFBackend

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "1")
    model, tok = chaotic
    first = tmp_path / "first"

    def fail(step):
        if step == 3:
            try:
                os.close(os.open(first, os.O_CREAT | os.O_EXCL))  # only the first child to get here
            except FileExistsError:
                return
            deadline = time.monotonic() + 30
            while len(set(log.read_text().split())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the other child is decoding too
            raise ValueError("loop failed")

    log = tmp_path / "steps"
    _log_steps(monkeypatch, log, fail)
    be = HFBackend(model, tok, batch_size=4, engine="fast", workers=2)
    with pytest.raises(ValueError, match="loop failed"):
        be.generate(_prompts(tok) * 2, max_new_tokens=200)
    steps = [log.read_text().split().count(p) for p in set(log.read_text().split())]
    assert len(steps) == 2 and max(steps) < 100  # the other child was stopped long before 200 tokens


def test_a_decoding_process_that_dies_is_reported(chaotic, one_thread, monkeypatch, tmp_path):
    import os

    from mathtune.generate.hf import HFBackend

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "1")
    model, tok = chaotic
    _log_steps(monkeypatch, tmp_path / "steps", lambda step: step == 2 and os._exit(3))
    be = HFBackend(model, tok, batch_size=4, engine="fast", workers=2)
    with pytest.raises(RuntimeError, match=r"decoding process ended abruptly \(exit code 3\)"):
        be.generate(_prompts(tok) * 2, max_new_tokens=20)


def test_when_decoding_loops_run_as_processes(monkeypatch):
    from types import SimpleNamespace

    from mathtune.generate import engine_procs

    cpu, cuda = SimpleNamespace(type="cpu"), SimpleNamespace(type="cuda")
    monkeypatch.delenv("MATHTUNE_DECODE_PROCESSES", raising=False)
    monkeypatch.setattr(engine_procs, "_can_fork", lambda: True)
    assert engine_procs.use_processes(cpu, 2, 2)  # one thread per loop
    assert engine_procs.use_processes(cpu, 1, 3)
    assert not engine_procs.use_processes(cpu, 16, 4)  # 4 threads per loop: a forked child cannot use them
    assert not engine_procs.use_processes(cpu, 2, 1)
    assert not engine_procs.use_processes(cuda, 2, 2)
    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "0")
    assert not engine_procs.use_processes(cpu, 2, 2)
    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "1")
    assert engine_procs.use_processes(cpu, 16, 4)
    monkeypatch.setattr(engine_procs, "_can_fork", lambda: False)
    assert not engine_procs.use_processes(cpu, 2, 2)  # no fork here (macOS, Windows): threads
    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", "yes")
    with pytest.raises(UserError, match="MATHTUNE_DECODE_PROCESSES"):
        engine_procs.use_processes(cpu, 2, 2)


def test_decode_worker_count(monkeypatch):
    from types import SimpleNamespace

    from mathtune.generate.engine_loop import cpu_workers

    cpu = SimpleNamespace(device=SimpleNamespace(type="cpu"))
    monkeypatch.delenv("MATHTUNE_DECODE_WORKERS", raising=False)
    assert cpu_workers(cpu, 1319, 2) == 2
    assert cpu_workers(cpu, 100, 2) == 1  # a second loop would get under 64 rows
    assert cpu_workers(cpu, 1319, 1) == 1
    assert cpu_workers(cpu, 1000, 16) == 15
    assert cpu_workers(SimpleNamespace(device=SimpleNamespace(type="cuda")), 1319, 16) == 1
    monkeypatch.setenv("MATHTUNE_DECODE_WORKERS", "3")
    assert cpu_workers(cpu, 10, 1) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MATHTUNE_DECODE_WORKERS", bad)
        with pytest.raises(UserError, match="MATHTUNE_DECODE_WORKERS"):
            cpu_workers(cpu, 1319, 2)


def test_claims_even_out_the_loops_rows_once_every_prompt_is_taken():
    from types import SimpleNamespace

    from mathtune.generate.engine_loop import Claims

    rows = [SimpleNamespace(prompt_idx=i // 2) for i in range(24)]  # 12 prompts of 2 rows
    claims = Claims(rows, loops=2)
    try:
        for _ in range(11):
            assert len(claims.claim(0)) == 2
        assert claims.plan_move(0, 22) is None  # a prompt is still there to claim
        assert claims.claim(1) == rows[22:]
        assert claims.claim(1) is None
        assert claims.plan_move(0, 21) is None  # rows are waiting or on their way to loop 0
        assert claims.plan_move(0, 22) == (1, 10)  # 22 against 2: ten move, and both count 12
        assert list(claims.count) == [12, 12]
        assert claims.plan_move(1, 12) is None
        claims.release(0, 9)
        assert claims.plan_move(1, 12) == (0, 4)  # 12 against 3
        assert claims.plan_move(0, 7) is None  # 7 against 8: within MIN_GAP
        assert not claims.leave(0)  # rows are still on their way to it
        claims.release(0, 7)
        assert claims.leave(0)
        claims.release(1, 6)
        assert claims.plan_move(1, 2) is None  # nobody left to take them
    finally:
        claims.close()


@pytest.mark.parametrize("processes", ["0", "1"])
def test_rows_moved_between_decoding_loops_keep_their_generations(chaotic, one_thread, monkeypatch, tmp_path,
                                                                  processes):  # fmt: skip
    """One loop claims all prompts but the last (the other waits), so it must hand rows over, caches
    and sampling states included; every prompt still gets what one loop gives it."""
    import time

    from mathtune.generate.engine_loop import Claims
    from mathtune.generate.hf import HFBackend

    monkeypatch.setenv("MATHTUNE_DECODE_PROCESSES", processes)
    model, tok = chaotic
    prompts = _prompts(tok) * 2
    seeds = [derive_seed(5, f"p{i}") for i in range(len(prompts))]
    claim, plan, leave = Claims.claim, Claims.plan_move, Claims.leave
    moves = tmp_path / "moves"
    moves.write_text("")
    before = [0]  # moves logged before the current call

    def late_claim(self, loop=0):  # loop 0 takes every prompt but the last, loop 1 only that one
        deadline = time.monotonic() + 30
        while loop == 1 and self._next.value < len(self.groups) - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        if loop == 0 and self._next.value == len(self.groups) - 1:
            while self._next.value < len(self.groups) and time.monotonic() < deadline:
                time.sleep(0.005)  # until loop 1 has its prompt: then loop 0 has all its rows to run
            return None
        return claim(self, loop)

    def late_leave(self, loop):  # loop 1 may not end before loop 0 has handed it rows (its own can end first)
        deadline = time.monotonic() + 30
        while loop == 1 and len(moves.read_text().split()) <= before[0] and time.monotonic() < deadline:
            time.sleep(0.005)
        return leave(self, loop)

    def logged_plan(self, loop, running):
        out = plan(self, loop, running)
        if out is not None:
            with open(moves, "a") as f:
                f.write(f"{out[1]}\n")
        return out

    runs = []
    for workers in (1, 2):
        if workers == 2:
            monkeypatch.setattr(Claims, "claim", late_claim)
            monkeypatch.setattr(Claims, "plan_move", logged_plan)
            monkeypatch.setattr(Claims, "leave", late_leave)
        be = HFBackend(model, tok, batch_size=64, engine="fast", workers=workers)
        res = []
        for kw in (dict(max_new_tokens=12), dict(n=2, temperature=1.0, max_new_tokens=12)):
            before[0] = len(moves.read_text().split())
            res.append(be.generate(prompts, seeds=seeds, **kw))
        runs.append([[[(g.text, g.tokens, g.finish_reason) for g in r] for r in rs] for rs in res])
    moved = [int(n) for n in moves.read_text().split()]
    assert len(moved) >= 2 and min(moved) >= 2  # in both calls, rows really moved
    assert runs[1] == runs[0]
