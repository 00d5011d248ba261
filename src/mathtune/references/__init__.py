"""Published GSM8K numbers for models mathtune knows, keyed by Hugging Face Hub id (gsm8k.yaml).

Every entry names its protocol (shots, chain-of-thought, harness) and its source URL: a published
number measured another way is context for ours, never a target we claim to match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from mathtune.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIELDS = ("value", "metric", "shots", "cot", "harness", "protocol", "source")


@dataclass(frozen=True)
class Reference:
    hub_id: str
    value: float  # percent
    metric: str
    shots: int | None
    cot: bool | None
    harness: str
    protocol: str
    source: str
    note: str = ""


def _parse(data: object, where: str) -> dict[str, list[Reference]]:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of Hub id -> list of references")
    out: dict[str, list[Reference]] = {}
    for hub_id, items in data.items():
        if not isinstance(items, list):
            raise UserError(f"{where}: {hub_id}: expected a list of references")
        refs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or any(k not in item for k in _FIELDS):
                raise UserError(f"{where}: {hub_id}[{i}]: needs the fields {', '.join(_FIELDS)}")
            refs.append(
                Reference(
                    hub_id=str(hub_id),
                    value=float(item["value"]),
                    metric=str(item["metric"]),
                    shots=item["shots"],
                    cot=item["cot"],
                    harness=str(item["harness"]),
                    protocol=str(item["protocol"]),
                    source=str(item["source"]),
                    note=str(item.get("note", "")),
                )
            )
        out[str(hub_id)] = refs
    return out


def load_references(path: str | Path | None = None) -> dict[str, list[Reference]]:
    """All GSM8K references: the packaged gsm8k.yaml, or `path` (tests, user files)."""
    if path is None:
        text = resources.files("mathtune.references").joinpath("gsm8k.yaml").read_text(encoding="utf-8")
        where = "mathtune/references/gsm8k.yaml"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    return _parse(yaml.safe_load(text), where)


def hub_id_for_spec(spec: str) -> str | None:
    """The Hub id a model spec stands for, without loading or converting anything.

    Aliases map through mathtune.models.ALIAS_HUB_IDS; a Hub id is itself; a local directory or
    GGUF file is matched by its name against the known ids (`.../SmolLM2-135M-Instruct`)."""
    from mathtune.models import ALIAS_HUB_IDS

    spec = spec.strip()
    if spec in ALIAS_HUB_IDS:
        return ALIAS_HUB_IDS[spec]
    if _HUB_ID.match(spec) and not Path(spec).expanduser().exists():
        return spec
    name = Path(spec.rstrip("/")).name.lower()
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    for hub_id in load_references():
        if hub_id.split("/", 1)[1].lower() == name:
            return hub_id
    return None


def references_for(spec: str) -> tuple[str | None, list[Reference]]:
    hub_id = hub_id_for_spec(spec)
    if hub_id is None:
        return None, []
    return hub_id, load_references().get(hub_id, [])
