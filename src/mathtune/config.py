"""The run config: one typed object, layered defaults -> YAML -> `key=value` overrides.

Defaults are the setup of the fine-tuning report that specified mathtune: 3 epochs, lr 2e-4,
LoRA r=8 / alpha=16 / dropout=0.1 / bias "none", gradient accumulation 1, early stopping after 5
evaluations without improvement of validation loss, 90/10 train/validation split.

Every stage reads the resolved config saved as `config.yaml` in the run directory, so a rerun or a
resumed stage sees exactly what the first run saw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mathtune.errors import UserError
from mathtune.io import atomic_write_text


class _Section(BaseModel):
    # extra="forbid": a typo in a YAML key is an error, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    spec: str = Field("smollm2-135m", description="Hub id, local HF directory, .gguf file, or alias.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weights dtype; auto = bf16 where the hardware supports it, else fp32."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the Hub. Off unless asked.")


class DataConfig(_Section):
    path: str = Field("openai/gsm8k", description="Local GSM8K directory/JSONL file, or a Hub dataset id.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Seeded share of the train file held out.")
    train_limit: int | None = Field(None, ge=1, description="Keep the first N training records after the split.")
    val_limit: int | None = Field(None, ge=1, description="Keep the first N validation records.")
    strip_calculator_annotations: bool = Field(True, description="Remove <<48/2=24>> from training targets.")
    completion_only_loss: bool = Field(True, description="Loss on the answer (assistant) tokens only.")
    max_seq_length: int = Field(512, ge=16, description="Training sequences are truncated to this many tokens.")
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="auto = the model's chat template when it has one, else 'Question: ...\\nAnswer:'."
    )


class LoraSection(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or a list of module names.")


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = Field("linear", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, description="Per-device train batch size.")
    eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(
        5, ge=1, description="Evaluations without validation-loss improvement before stopping; null: off."
    )
    eval_steps: int = Field(50, ge=1, description="Evaluate on the validation split every N steps.")
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(50, ge=1, description="Adapter checkpoint every N steps.")
    save_total_limit: int | None = Field(3, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Mixed precision for training; auto = bf16 autocast where supported."
    )
    packing: bool = Field(False, description="Pack several examples per row (padding-free).")
    gradient_checkpointing: bool = False
    use_liger_kernel: bool = Field(False, description="Liger kernels (GPU, when installed).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; null: all cores.")


class EvalConfig(_Section):
    data: str | None = Field(None, description="GSM8K data for evaluation; null: data.path.")
    split: str = "test"
    limit: int | None = Field(None, ge=1, description="First N items of the split.")
    prompt: Literal["chat", "cot-8shot", "cot-8shot-multiturn", "zero-shot-cot"] = "chat"
    samples: int = Field(1, ge=1, description="Generations per item; >1 means self-consistency.")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(
        256, ge=1, description="Sequences decoded together (the fast engine also caps it by a KV-cache memory budget)."
    )
    backend: Literal["hf", "vllm"] = "hf"
    engine: Literal["auto", "fast", "transformers"] = Field(
        "auto",
        description="hf decode path: the fast Llama-family engine where the model allows it, else transformers.",
    )
    headline: Literal["strict", "flexible"] = Field(
        "flexible", description="Which extraction is the headline accuracy (both are reported)."
    )
    self_consistency: int | None = Field(
        None, ge=2, description="In `mathtune run`: also run maj@K with K samples at sc_temperature."
    )
    sc_temperature: float = Field(0.7, gt=0.0)
    sc_limit: int | None = Field(None, ge=1, description="Items for the self-consistency run (null: limit).")
    tasks: list[str] = Field(default_factory=lambda: ["gsm8k"], description="Tasks `mathtune run` evaluates.")
    task_limit: int | dict[str, int] | None = Field(
        None,
        description="Items per non-GSM8K task in `mathtune run`: one number for all, or a mapping "
        "task -> N (for mmlu, N is per subject; for gsm_symbolic, templates).",
    )

    def limit_for(self, task: str) -> int | None:
        if isinstance(self.task_limit, dict):
            return self.task_limit.get(task)
        return self.task_limit

    @model_validator(mode="after")
    def _task_limits_positive(self) -> EvalConfig:
        limits = self.task_limit.values() if isinstance(self.task_limit, dict) else [self.task_limit]
        if any(v is not None and v < 1 for v in limits):
            raise ValueError("eval.task_limit values must be >= 1")
        return self

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> EvalConfig:
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError("eval.samples > 1 needs eval.temperature > 0 (greedy samples are identical)")
        return self


class ReportConfig(_Section):
    price_per_hour: float = Field(0.0, ge=0.0, description="Device price in $/hour for the cost line.")
    device_label: str | None = Field(None, description="Name of the priced device (default: detected).")
    trend_window: float = Field(0.25, gt=0.0, le=1.0, description="Share of final logged steps for the trend.")


class RunConfig(_Section):
    name: str = "run"
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name")
    @classmethod
    def _name_stays_under_runs(cls, v: str) -> str:
        # Without --output the run directory is runs/<name>: a name from a shared config must not
        # place it elsewhere (tests/faults/test_untrusted_text.py).
        if not v.strip() or Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a relative name without '..' (the default run directory is runs/<name>)")
        return v

    @property
    def eval_data(self) -> str:
        return self.eval.data or self.data.path

    def gsm8k_eval_kwargs(self) -> dict[str, Any]:
        """The `evaluate_gsm8k` arguments this config fixes for every GSM8K evaluation (one place,
        for `mathtune eval` and `mathtune run`); callers add the adapter, the item limit and the
        decoding of that evaluation, and where to write it."""
        e = self.eval
        return dict(
            model=self.model.spec,
            data=self.eval_data,
            split=e.split,
            prompt=e.prompt,
            max_new_tokens=e.max_new_tokens,
            batch_size=e.batch_size,
            backend=e.backend,
            engine=e.engine,
            seed=self.seed,
            headline=e.headline,
            dtype=self.model.dtype,
        )


def _format_validation_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {loc}: {msg}"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {dotted}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["train.learning_rate=1e-4", "eval.limit=50"]` -> nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set {item}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read config ({e.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)  # safe_load: a config never constructs Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: config must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults, then the YAML file, then overrides (`section.key=value` strings or a nested dict)."""
    tree: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else "config"
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        tree = _deep_merge(tree, extra)
        source = f"{source} (with overrides)"
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format_validation_error(e, source)) from None


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, config_to_yaml(cfg))
