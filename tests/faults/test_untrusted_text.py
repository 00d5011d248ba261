"""Untrusted text stays text: report injection beyond model output, safe YAML everywhere, confined paths.

tests/test_report.py covers model output holding `<script>`; here the payloads sit in every other
field a report prints: question, gold answer and solution, item id, extracted answers, the run's
name, the model spec and the data path (both come from a config file someone may have sent you),
and the name of an eval directory. HTML must show them escaped; Markdown must not turn them into
raw HTML, links or images (a remote image in a Markdown report is a tracking pixel).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from faults.conftest import main_rc
from mathtune.config import load_config, parse_overrides
from mathtune.errors import UserError
from mathtune.io import confined
from mathtune.report.build import build_report, md_cell, md_text

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_artifacts" / "small"
SRC = Path(__file__).resolve().parents[2] / "src" / "mathtune"


def payload(tag: str) -> str:
    """Raw HTML, a javascript: link, a remote image, and a backslash trick against naive escaping."""
    return (f"<script>{tag}</script><img src=x onerror={tag}>[l{tag}](javascript:{tag})"
            f"![i{tag}](https://evil.example/{tag}.png)\\[b{tag}\\](javascript:{tag})")  # fmt: skip


FIELDS = ["QUESTION", "GOLDSOL", "GOLD", "ITEMID", "ANSWER", "NAME", "SPEC", "DATA", "TAG"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[str, str]:
    run = tmp_path_factory.mktemp("untrusted") / "run"
    shutil.copytree(FIXTURE, run)
    cfg = (run / "config.yaml").read_text()
    for key, old, tag in (("name", "fixture-small", "NAME"), ("spec", "smollm2-135m", "SPEC"),
                          ("path", "tests/fixtures/gsm8k-mini", "DATA")):  # fmt: skip
        cfg = cfg.replace(f"{key}: {old}", f"{key}: {json.dumps(payload(tag))}", 1)
    (run / "config.yaml").write_text(cfg)
    assert load_config(run / "config.yaml").name == payload("NAME")
    for tag in ("base", "tuned"):
        path = run / "eval" / tag / "records.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        for r in recs:
            r["question"] = payload("QUESTION") + r["question"]
            r["gold_solution"] = payload("GOLDSOL") + r["gold_solution"]
            r["gold"] = payload("GOLD")
            r["id"] = payload("ITEMID") + r["id"]
            r["strict"] = r["flexible"] = r["generations"][0]["strict"] = payload("ANSWER")
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    # An eval directory with markup in its name (a user's own `mathtune eval --output`).
    shutil.copytree(run / "eval" / "tuned", run / "eval" / "x<script>TAG</script>")
    md, html = build_report(run)
    return md.read_text(encoding="utf-8"), html.read_text(encoding="utf-8")


def _outside_fences(md: str) -> str:
    """The Markdown that a renderer interprets (code fences removed; fence length respected)."""
    out, fence = [], None
    for line in md.splitlines():
        m = re.match(r"^(`{3,})", line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            out.append(line)
    assert fence is None, "unclosed code fence"
    return "\n".join(out)


def test_every_payload_reaches_the_report(report):
    md, html = report
    for tag in ("QUESTION", "GOLDSOL", "ITEMID", "NAME", "SPEC", "DATA"):
        assert tag in md and tag in html, tag  # else the checks below would prove nothing


def test_html_shows_every_field_as_text(report):
    _, html = report
    assert "<script" not in html
    assert 'href="javascript' not in html
    # Every <img> is one of the embedded plots; every payload's markup is escaped.
    for tag in re.findall(r"<img\b[^>]*>", html):
        assert re.match(r'<img src="data:image/png;base64,', tag), tag
    for tag in FIELDS:
        if tag in html:
            assert f"<script>{tag}" not in html and f"<img src=x onerror={tag}" not in html


def test_markdown_turns_no_field_into_html_links_or_images(report):
    md, _ = report
    live = _outside_fences(md)
    for tag in FIELDS:
        assert f"<script>{tag}" not in live, tag
        assert f"<img src=x onerror={tag}" not in live, tag
        # A live link or image: unescaped '[' ... '](' ; the escaped form is '\[' (with an even run of
        # backslashes before it meaning the backslashes escape each other, not the bracket).
        for m in re.finditer(rf"(\\*)!?\[[li]?b?{tag}\\*\]\(", live):
            assert len(m.group(1)) % 2 == 1, (tag, live[max(0, m.start() - 40) : m.end() + 40])


def test_md_escapers_neutralise_backslash_tricks():
    for f in (md_text, md_cell):
        out = f("\\[x\\](javascript:alert(1)) ![i](https://e/x.png) <b>")
        assert "<b>" not in out
        for m in re.finditer(r"(\\*)\[", out):
            assert len(m.group(1)) % 2 == 1, out


# ---- YAML ---------------------------------------------------------------------------------------

PYTHON_TAGS = [
    "name: !!python/object/apply:os.system ['touch {marker}']\n",
    "name: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "seed: !!python/name:os.system\n",
    "model: !!python/object:mathtune.config.ModelConfig {{spec: x}}\n",
]


@pytest.mark.parametrize("text", PYTHON_TAGS)
def test_config_with_python_tags_is_refused_and_runs_nothing(text, tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.format(marker=marker))
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(cfg)
    # Through the CLI: exit 2, one line, nothing executed, no run directory made.
    assert main_rc(["train", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid YAML" in err[0]
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_python_tag_in_a_set_override_stays_a_string(tmp_path):
    marker = tmp_path / "pwned"
    tree = parse_overrides([f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert isinstance(tree["name"], str) and not marker.exists()


def test_python_tag_in_a_run_dirs_config_stops_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    marker = tmp_path / "pwned"
    (run / "config.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main_rc(["report", str(run)]) == 2
    assert "invalid YAML" in capsys.readouterr().err and not marker.exists()


def test_no_unsafe_loader_anywhere_in_the_package():
    """No yaml.load/unsafe_load/full_load, pickle, eval/exec, or torch.load in mathtune's own code."""
    bad = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (
                f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "?")  # fmt: skip
            if name in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load",
                        "pickle.loads", "torch.load", "marshal.loads"):  # fmt: skip
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}: {name}")
    assert bad == []


# ---- paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "eval/../../x"])
def test_confined_refuses_escapes(tmp_path, rel):
    with pytest.raises(UserError, match="escapes the run directory"):
        confined(tmp_path / "run", rel)


def test_confined_refuses_a_symlink_out(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval").symlink_to(tmp_path)
    with pytest.raises(UserError, match="escapes"):
        confined(run, "eval/base")
    assert confined(run, "adapter") == (run / "adapter").resolve()


@pytest.mark.parametrize("task", ["../../escape", "/tmp/escape", "arc_easy/../../../escape"])
def test_task_names_cannot_leave_the_run_dir(task, tiny_model_dir, fault_data, tmp_path, capsys):
    # The pipeline builds eval/<model>-<task> from task names: an unknown name is refused before work.
    run = tmp_path / "run"
    rc = main_rc(["run", "--output", str(run), "--quiet", "--set", f"model.spec={tiny_model_dir}",
                  "--set", f"data.path={fault_data}", "--tasks", task])  # fmt: skip
    assert rc == 2 and "unknown task" in capsys.readouterr().err
    assert not run.exists() and not (tmp_path / "escape").exists()
    assert main_rc(["eval", "--task", task, "--model", str(tiny_model_dir), "--output", str(run / "e")]) == 2
    assert "unknown task" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs-escaped", "a/../../escaped"])
def test_a_config_name_cannot_place_the_default_run_dir_outside_runs(name, tiny_model_dir, fault_data, tmp_path,
                                                                     monkeypatch, capsys):  # fmt: skip
    # Without --output the run directory is runs/<name>; a name from a shared config must not point it elsewhere.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    reached = []

    def fake_train(cfg, run_dir, **kw):
        reached.append(Path(run_dir))
        raise UserError("stopped by the test")

    monkeypatch.setattr("mathtune.train.train", fake_train)
    rc = main_rc(["train", "--set", f"name={name}", "--set", f"model.spec={tiny_model_dir}",
                  "--set", f"data.path={fault_data}"])  # fmt: skip
    assert rc == 2 and reached == [], reached
    assert "name" in capsys.readouterr().err
