"""The fast Llama-family engine computes transformers' function: logits, GQA, biases, LoRA, slots."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny(kind: str, *, dtype=None, **extra):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=97,
        hidden_size=96,  # head_dim 16: the C kernels' smallest
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    cfg = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind](**{**common, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # large weights: attention far from uniform, so a wrong mask shows
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 2 else 0.2) + (p.dim() == 1))
    return model.to(dtype or torch.float32).eval()


class _Reference:
    """transformers' logits of a sequence in fp64 (the truth) and in fp32 (the yardstick: the
    engine's error must stay within 3x transformers' own fp32 error on that sequence). A fixed
    tolerance would not do: these random weights amplify rounding differently per model, and a
    path that shares transformers' roundings (torch ops) can look closer than a more accurate one."""

    def __init__(self, model):
        import copy

        self.model, self.model64 = model, copy.deepcopy(model).double()

    def logits(self, ids: list[int]):
        with torch.inference_mode():
            ids_t = torch.tensor([ids])
            return self.model(input_ids=ids_t).logits[0].double(), self.model64(input_ids=ids_t).logits[0]

    def errors(self, got, ids: list[int], at: int = -1) -> tuple[float, float]:
        """(the engine's, transformers') largest logit error against fp64 on that row."""
        fp32, truth = self.logits(ids)
        return float((got.double() - truth[at]).abs().max()), float((fp32[at] - truth[at]).abs().max())

    def check(self, got, ids: list[int], at: int = -1) -> None:
        fp32, truth = self.logits(ids)
        allowed = 3 * float((fp32 - truth).abs().max()) + 1e-5
        assert float((got.double() - truth[at]).abs().max()) <= allowed


PATHS = ["kernels", "torch", "plain"]  # C kernels + oneDNN; torch ops + oneDNN; torch ops + plain matmuls


def _engine(model, path: str):
    from mathtune.generate import cpu_kernels
    from mathtune.generate.llama_engine import LlamaEngine

    if path == "kernels" and not cpu_kernels.available(2, 16):
        pytest.skip("the C kernels do not build here")
    eng = LlamaEngine(model, kernels=path == "kernels", onednn=path != "plain")
    assert eng.kernel == (path == "kernels")
    return eng


def _check(model, seqs: list[list[int]], path: str = "kernels", *, on_average: bool = False):
    """Prefill each sequence's prompt (all but its last 3 tokens) in one step, then decode the last
    3 tokens of all sequences together; every logit row must equal transformers' full forward.
    `on_average` (bf16): the rows' mean error within 2x transformers' mean instead, because bf16
    rounding on these large random weights is chaotic: one row's error varies 10x with any change
    of rounding, in transformers too (measured on 12 random sequences: 0.2x to 4x of its error)."""
    from mathtune.generate.llama_engine import Prefill

    eng = _engine(model, path)
    eng.allocate(len(seqs), 64)
    with torch.inference_mode():
        got = eng.logits(eng.forward(None, None, [Prefill(i, s[:-3]) for i, s in enumerate(seqs)]))
        steps = [got]
        for k in (3, 2, 1):
            toks = torch.tensor([s[-k] for s in seqs])
            pos = torch.tensor([len(s) - k for s in seqs])
            steps.append(eng.logits(eng.forward(toks, pos, [])))
    ref = _Reference(model)
    rows = [(steps[0][i], s, len(s) - 4) for i, s in enumerate(seqs)]
    rows += [(steps[j + 1][i], s, len(s) - k) for i, s in enumerate(seqs) for j, k in enumerate((3, 2, 1))]
    if on_average:
        errs = torch.tensor([ref.errors(*row) for row in rows])
        assert float(errs[:, 0].mean()) <= 2 * float(errs[:, 1].mean())
        return
    for row in rows:
        ref.check(*row)


SEQS = [[5, 9, 2, 33, 40, 41, 7, 8, 60, 3], [5, 9, 2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [1, 2, 3, 4, 5]]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_engine_logits_equal_transformers(kind, path):
    # Sequences of different lengths share slots' decode steps: positions, masks and GQA per row.
    _check(_tiny(kind), SEQS, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_bf16_engine_is_as_accurate_as_transformers_bf16(kind, path):
    model = _tiny(kind, dtype=torch.bfloat16)  # the truth is then these bf16 weights in fp64
    eng = _engine(model, path)
    assert eng.dtype == torch.bfloat16 and not eng.screen  # the fp32 head's screen stays off
    assert eng.onednn == (path != "plain" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    _check(model, SEQS, path, on_average=True)


def test_engine_folds_unmerged_lora_weights():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # PEFT initialises B to zero (a no-op adapter); make it matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape) * 0.3)
    model.eval()
    _check(model, SEQS[:2])


@pytest.mark.parametrize("path", PATHS)
def test_mixed_step_prefill_and_decode_and_prefix_reuse(path):
    """A step that decodes slot 0 while prefilling slots 1 and 2 (batched: same start) after a
    cached prefix gives the logits of running each sequence alone."""
    from mathtune.generate.llama_engine import Prefill

    model = _tiny("llama")
    a, b = SEQS[0], SEQS[1]
    c = b[:3] + [70, 71]  # a, b and c share their first 3 tokens; c is shorter than b (padding)
    eng = _engine(model, path)
    eng.allocate(3, 64)
    with torch.inference_mode():
        eng.forward(None, None, [Prefill(0, a[:3])])
        prefix = eng.save_prefix(0, 3)
        eng.forward(None, None, [Prefill(0, a[3:-1], 3)])
        eng.load_prefix(prefix, 1)
        eng.load_prefix(prefix, 2)
        dec = (torch.tensor([a[-1]]), torch.tensor([len(a) - 1]))
        out = eng.logits(eng.forward(*dec, [Prefill(1, b[3:], 3), Prefill(2, c[3:], 3)]))
        nxt = eng.logits(eng.forward(torch.tensor([0, 5, 6]), torch.tensor([len(a), len(b), len(c)]), []))
    ref = _Reference(model)
    for got, seq in zip(out, (a, b, c), strict=True):
        ref.check(got, seq)
    for got, seq in zip(nxt, (a + [0], b + [5], c + [6]), strict=True):  # the cache they left is right
        ref.check(got, seq)


def test_greedy_screening_returns_the_exact_argmax_even_for_near_ties():
    """bf16 screening must never change the greedy token: rows of the head are made near-equal
    (apart by 1e-3 per weight: logit gaps far below bf16 resolution), so only the fp32 recheck
    can tell them apart. Compared with fp64 logits on rows whose top-2 gap is above fp32 noise."""
    from mathtune.generate.llama_engine import LlamaEngine

    eng = LlamaEngine(_tiny("llama", hidden_size=48))  # the width this test's near-ties were built for
    assert eng.screen
    g = torch.Generator().manual_seed(3)
    head = eng.lm_head
    for j in range(1, 40):  # tokens 1..39: near-copies of token 0
        head[j] = head[0] + 1e-3 * torch.randn(head.shape[1], generator=g)
    eng.prepare_head()
    h = torch.randn((500, head.shape[1]), generator=g) * 3
    h[:250] = head[0] * 4 + torch.randn((250, head.shape[1]), generator=g)  # token 0's group wins
    exact = h.double() @ head.double().T
    top = exact.topk(2, dim=-1).values
    clear = (top[:, 0] - top[:, 1]) > 1e-4
    want = exact.argmax(-1)
    full = []  # rows given full fp32 logits
    logits = eng.logits
    eng.logits = lambda x: full.extend([1] * len(x)) or logits(x)
    got, unsettled = {}, {}
    for wide in (eng.screen_k, 16, 48):  # the second look as wide as the first, under and over 40
        eng.screen_wide = wide
        full.clear()
        got[wide], unsettled[wide] = eng.greedy(h), len(full)
    assert torch.equal(got[16], got[8]) and torch.equal(got[48], got[8])
    assert unsettled[16] > 0  # full logits decide where the near-copies outnumber the candidates
    assert unsettled[48] < unsettled[8] / 10  # and 48 candidates cover the 40 near-copies
    got = got[48]
    near = want[:250][clear[:250]]
    assert len(near) > 200 and len(set(near.tolist())) > 5 and (near < 40).all()  # near-ties decide
    assert torch.equal(got[clear], want[clear])
    bf16 = (h.bfloat16() @ eng._head_bf16.T).float().argmax(-1)
    assert (bf16[clear] != want[clear]).sum() > 20  # bf16 logits alone would often be wrong


def test_unsupported_models_fall_back_or_fail_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel

    from mathtune.generate.hf import HFBackend
    from mathtune.generate.llama_engine import supports

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "gpt2" in supports(gpt2)
    assert "sliding-window" in supports(_tiny("mistral", sliding_window=16))
    assert supports(_tiny("mistral", sliding_window=None)) is None

    class Tok:
        eos_token_id = 0
        pad_token_id = 0

    assert HFBackend(gpt2, Tok()).fast_engine() is None  # auto: the transformers loop runs
    with pytest.raises(ValueError, match="gpt2"):
        HFBackend(gpt2, Tok(), engine="fast").fast_engine()


def test_a_shared_prefix_is_read_from_its_one_copy_with_the_same_logits():
    """share_prefix: the kernels read positions below the prefix length from the saved copy; the
    logits are bit-identical to reading each slot's own copy."""
    from mathtune.generate.llama_engine import Prefill

    model = _tiny("llama")
    a, b = SEQS[0], SEQS[1]  # share their first 3 tokens
    results = []
    for share in (False, True):
        eng = _engine(model, "kernels")
        eng.allocate(2, 64)
        with torch.inference_mode():
            eng.forward(None, None, [Prefill(0, a[:3])])
            prefix = eng.save_prefix(0, 3)
            eng.load_prefix(prefix, 1)
            if share:
                eng.share_prefix(prefix)
            first = eng.logits(eng.forward(None, None, [Prefill(0, a[3:-1], 3), Prefill(1, b[3:-1], 3)]))
            if share:  # from here on the slots' own copies of positions 0..2 must not matter
                for k, v in zip(eng.keys, eng.values, strict=True):
                    k[:, :, :3], v[:, :, :3] = float("nan"), float("nan")
            dec = eng.logits(eng.forward(torch.tensor([a[-1], b[-1]]), torch.tensor([len(a) - 1, len(b) - 1]), []))
        results.append((first, dec))
        eng.allocate(1, 8)
        assert eng._shared is None  # a new cache forgets the prefix
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_row_alone_gets_the_same_matmul_result_as_in_a_batch(dtype):
    # oneDNN runs a single row through another kernel (another summation order): the last row of a
    # run, alone in its step, used to come out a few ulps off, which flipped a bf16 near-tie.
    from mathtune.generate.llama_engine import _linear, _onednn_ok, _onednn_pack

    dt = getattr(torch, dtype)
    if not _onednn_ok(dt):
        pytest.skip(f"oneDNN does not run {dtype} here")
    g = torch.Generator().manual_seed(0)
    w = _onednn_pack(torch.randn((576, 1536), generator=g).to(dt))  # SmolLM2's down projection
    x = torch.randn((5, 1536), generator=g).to(dt)
    batch = _linear(x, w)
    for i in range(5):
        assert torch.equal(_linear(x[i : i + 1].contiguous(), w), batch[i : i + 1])
