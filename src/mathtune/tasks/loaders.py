"""Multiple-choice items for ARC, MMLU and HellaSwag, built with lm-evaluation-harness' zero-shot templates.

Each loader reads a local copy (the original release formats) or the Hugging Face Hub, validates
every row (a bad row is a UserError naming file and line), and renders the item with the same
context/choices as lm-eval so the scores are comparable:

- ARC (lm-eval `lm_eval/tasks/arc/arc_easy.yaml`, `arc_challenge.yaml` includes it):
  context `Question: {question}\\nAnswer:`, choices = the answer texts, gold = index of answerKey
  among the labels (labels may be A-E or 1-5).
- MMLU (lm-eval `lm_eval/tasks/mmlu/default/_default_template_yaml` + per-subject `mmlu_<subject>.yaml`
  description): `The following are multiple choice questions (with answers) about {subject words}.\\n\\n`
  + `{question.strip()}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:`, choices = `A`..`D`.
- HellaSwag (lm-eval `lm_eval/tasks/hellaswag/hellaswag.yaml` + `utils.py` process_docs/preprocess):
  context = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices =
  preprocess(ending); the labelled split is `validation` (the test split has no labels).

lm-eval joins context and choice with `target_delimiter` = " "; mc.py adds that space.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.errors import UserError
from mathtune.io import iter_jsonl

SHARED_DATA = Path("..") / "shared" / "data"
HUB_IDS = {"arc": "allenai/ai2_arc", "mmlu": "cais/mmlu", "hellaswag": "Rowan/hellaswag"}
ARC_CONFIGS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
MMLU_LETTERS = ("A", "B", "C", "D")

# (template name, version): recorded in every summary; bump the version when the wording changes.
TEMPLATES = {
    "arc": ("lm-eval:arc_easy/arc_challenge zero-shot", 1),
    "mmlu": ("lm-eval:mmlu/default zero-shot", 1),
    "hellaswag": ("lm-eval:hellaswag zero-shot", 1),
}


@dataclass(frozen=True)
class MCItem:
    id: str
    context: str
    choices: list[str] = field(hash=False)  # choice texts without the leading target delimiter
    gold: int
    subject: str | None = None


# ---------------------------------------------------------------- data location


def default_data(family: str) -> str:
    """`../shared/data/<family>` when it exists relative to the CWD, else the Hub id."""
    local = SHARED_DATA / family
    return str(local) if local.exists() else HUB_IDS[family]


def _is_local(path: str) -> bool:
    p = Path(path).expanduser()
    return p.exists() or path.startswith((".", "/", "~")) or path.endswith((".jsonl", ".csv", ".json"))


def _hub(repo: str, config: str | None, split: str) -> Any:
    try:
        import datasets

        return datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # offline, unknown id, missing config: one line for the user
        raise UserError(
            f"data '{repo}': cannot load from the Hugging Face Hub ({type(e).__name__}); "
            "pass a local path with --data instead"
        ) from None


def _jsonl_rows(file: Path) -> Iterable[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line."""
    lines = file.read_bytes().split(b"\n")
    line_nos = [i for i, line in enumerate(lines, start=1) if line.strip()]
    yield from zip(line_nos, iter_jsonl(file, tolerate_torn_tail=False), strict=True)


def _nonempty_str(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: missing or empty '{name}'")
    return value


# ---------------------------------------------------------------- ARC


def arc_item(obj: dict, where: str) -> MCItem:
    """An AI2 ARC row: the original release (`question: {stem, choices: [{text, label}]}`) or the
    Hub's flattened form (`question: str, choices: {text: [...], label: [...]}`)."""
    q = obj.get("question")
    if isinstance(q, dict):  # original AI2 JSONL
        stem = _nonempty_str(q.get("stem"), where, "question.stem")
        raw = q.get("choices")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
            raise UserError(f"{where}: 'question.choices' must be a non-empty list of {{text, label}}")
        texts = [c.get("text") for c in raw]
        labels = [c.get("label") for c in raw]
    else:
        stem = _nonempty_str(q, where, "question")
        raw = obj.get("choices")
        if not isinstance(raw, dict):
            raise UserError(f"{where}: 'choices' must be a mapping with 'text' and 'label' lists")
        texts, labels = list(raw.get("text") or []), list(raw.get("label") or [])
    if len(texts) < 2 or len(texts) != len(labels):
        raise UserError(f"{where}: need at least 2 choices with one label each")
    for t in texts:
        _nonempty_str(t, where, "choice text")
    labels = [str(lab).strip() for lab in labels]
    key = obj.get("answerKey")
    key = str(key).strip() if key is not None else ""
    if key not in labels:
        raise UserError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise UserError(f"{where}: missing 'id'")
    return MCItem(id=rid, context=f"Question: {stem}\nAnswer:", choices=texts, gold=labels.index(key))


def _arc_file(path: Path, config: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for cand in (path / config / f"{config}-Test.jsonl", path / f"{config}-Test.jsonl"):
            if cand.is_file():
                return cand
        raise UserError(f"{path}: no {config}/{config}-Test.jsonl in this directory")
    raise UserError(f"{path}: data path not found")


def load_arc(task: str, data: str | None = None, *, limit: int | None = None) -> list[MCItem]:
    config = ARC_CONFIGS[task]
    data = data or default_data("arc")
    items: list[MCItem] = []
    if _is_local(data):
        file = _arc_file(Path(data).expanduser(), config)
        for line_no, obj in _jsonl_rows(file):
            items.append(arc_item(obj, f"{file}:{line_no}"))
            if limit is not None and len(items) >= limit:
                break
    else:
        for idx, row in enumerate(_hub(data, config, "test")):
            items.append(arc_item(dict(row), f"{data}[{config}][test][{idx}]"))
            if limit is not None and len(items) >= limit:
                break
    _check_unique(items, data)
    return items


# ---------------------------------------------------------------- MMLU


def mmlu_context(subject: str, question: str, choices: list[str]) -> str:
    # lm-eval's per-subject description uses the subject name with underscores as spaces.
    head = f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"
    body = question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(MMLU_LETTERS, choices, strict=True))
    return head + body + "\nAnswer:"


def mmlu_item(subject: str, idx: int, question: Any, choices: list[Any], answer: Any, where: str) -> MCItem:
    q = _nonempty_str(question, where, "question")
    if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: expected 4 answer choices")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4:
        gold = answer
    elif isinstance(answer, str) and answer.strip() in MMLU_LETTERS:
        gold = MMLU_LETTERS.index(answer.strip())
    else:
        raise UserError(f"{where}: answer must be one of A, B, C, D, got {answer!r}")
    choices = [str(c) for c in choices]
    return MCItem(
        id=f"{subject}-{idx}",
        context=mmlu_context(subject, q, choices),
        choices=list(MMLU_LETTERS),
        gold=gold,
        subject=subject,
    )


def _mmlu_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        for d in (path / "test", path):
            files = sorted(d.glob("*_test.csv"))
            if files:
                return files
        raise UserError(f"{path}: no *_test.csv files here or under test/ (hendrycks MMLU format)")
    raise UserError(f"{path}: data path not found")


def _mmlu_csv(file: Path, limit: int | None) -> list[MCItem]:
    subject = file.name.removesuffix(".csv").removesuffix("_test")
    out: list[MCItem] = []
    with open(file, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        row_no = 0
        try:
            for row in reader:
                row_no += 1
                # a quoted field may span lines: name the row and the line it ends on
                where = f"{file}:{reader.line_num} (row {row_no})"
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != 6:
                    raise UserError(f"{where}: expected 6 fields (question, A, B, C, D, answer), got {len(row)}")
                out.append(mmlu_item(subject, row_no - 1, row[0], row[1:5], row[5], where))
                if limit is not None and len(out) >= limit:
                    break
        except csv.Error as e:
            raise UserError(f"{file}:{reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError:
            raise UserError(f"{file}: not UTF-8") from None
    return out


def load_mmlu(data: str | None = None, *, limit: int | None = None) -> list[MCItem]:
    """All 57 subjects (or the given CSV files). `limit` is PER SUBJECT: the first `limit` items of
    each subject, so a small run still covers every subject (a total limit would take only the
    first subjects alphabetically)."""
    data = data or default_data("mmlu")
    items: list[MCItem] = []
    if _is_local(data):
        for file in _mmlu_files(Path(data).expanduser()):
            items.extend(_mmlu_csv(file, limit))
    else:
        counts: dict[str, int] = {}
        for idx, row in enumerate(_hub(data, "all", "test")):
            row = dict(row)
            where = f"{data}[all][test][{idx}]"
            subject = row.get("subject")
            if not isinstance(subject, str) or not subject:
                raise UserError(f"{where}: missing 'subject'")
            k = counts.get(subject, 0)
            counts[subject] = k + 1
            if limit is not None and k >= limit:
                continue
            items.append(
                mmlu_item(subject, k, row.get("question"), list(row.get("choices") or []), row.get("answer"), where)
            )
    if not items:
        raise UserError(f"{data}: no MMLU items found")
    _check_unique(items, data)
    return items


# ---------------------------------------------------------------- HellaSwag

_BRACKETS = re.compile(r"\[.*?\]")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's `utils.preprocess`: WikiHow artifacts ([title], [step], ...) removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETS.sub("", text)
    return text.replace("  ", " ")


def hellaswag_item(obj: dict, where: str, fallback_id: int) -> MCItem:
    ctx_a = obj.get("ctx_a")
    ctx_b = obj.get("ctx_b")
    label = obj.get("activity_label")
    if not isinstance(ctx_a, str) or not isinstance(ctx_b, str):
        raise UserError(f"{where}: missing 'ctx_a'/'ctx_b' (not HellaSwag format)")
    if not isinstance(label, str):
        raise UserError(f"{where}: missing 'activity_label'")
    endings = obj.get("endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: 'endings' must be a list of strings")
    gold = obj.get("label")
    if isinstance(gold, str) and gold.strip().isdigit():  # the Hub stores labels as strings
        gold = int(gold)
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(endings):
        raise UserError(f"{where}: 'label' must be an index into 'endings' (the test split has no labels)")
    ind = obj.get("ind", fallback_id)
    # str.capitalize() also lower-cases the rest of ctx_b; lm-eval does exactly this, so we do too.
    ctx = ctx_a + " " + ctx_b.capitalize()
    return MCItem(
        id=f"hellaswag-{ind}",
        context=hellaswag_preprocess(label + ": " + ctx),
        choices=[hellaswag_preprocess(e) for e in endings],
        gold=gold,
    )


def _hellaswag_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        cand = path / "hellaswag_val.jsonl"
        if cand.is_file():
            return cand
        raise UserError(f"{path}: no hellaswag_val.jsonl in this directory")
    raise UserError(f"{path}: data path not found")


def load_hellaswag(data: str | None = None, *, limit: int | None = None) -> list[MCItem]:
    data = data or default_data("hellaswag")
    items: list[MCItem] = []
    if _is_local(data):
        file = _hellaswag_file(Path(data).expanduser())
        for n, (line_no, obj) in enumerate(_jsonl_rows(file)):
            items.append(hellaswag_item(obj, f"{file}:{line_no}", n))
            if limit is not None and len(items) >= limit:
                break
    else:
        for idx, row in enumerate(_hub(data, None, "validation")):
            items.append(hellaswag_item(dict(row), f"{data}[validation][{idx}]", idx))
            if limit is not None and len(items) >= limit:
                break
    _check_unique(items, data)
    return items


def _check_unique(items: list[MCItem], data: str) -> None:
    if not items:
        raise UserError(f"{data}: no items found")
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise UserError(f"{data}: duplicate item id {it.id!r}")
        seen.add(it.id)


def load_mc(task: str, data: str | None, limit: int | None) -> tuple[list[MCItem], str, str]:
    """(items, data location used, template family) for a multiple-choice task."""
    if task in ARC_CONFIGS:
        data = data or default_data("arc")
        return load_arc(task, data, limit=limit), data, "arc"
    if task == "mmlu":
        data = data or default_data("mmlu")
        return load_mmlu(data, limit=limit), data, "mmlu"
    if task == "hellaswag":
        data = data or default_data("hellaswag")
        return load_hellaswag(data, limit=limit), data, "hellaswag"
    raise KeyError(task)
