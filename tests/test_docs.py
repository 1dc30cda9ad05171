"""Docs that cannot drift: every example in README.md and docs/ runs, or says what it needs.

Rules (checked here):

- Every fenced block has a language (```bash, ```python, ```text, ...).
- A ```bash / ```python block is executed in a fresh temporary folder (with `escnet/` and `configs/`
  linked in, `escnet` on PATH, HF_HUB_OFFLINE=1 and the caches inside the folder) and must exit 0,
  unless it is marked as needing something this test cannot give it: an HTML comment
  `<!-- needs: weights -->` on the line before the block, or a first line `# needs: weights`.
  Known needs: weights, data, gpu, network, long, browser. Identical blocks run once.
- Every `--flag` written after `escnet COMMAND` (in code blocks and inline code) is an option of
  that command's parser (escnet.cli.build_parser), and COMMAND is a command.
- Every `key=value` after `escnet train`, every inline `model.FIELD` / `clip.FIELD`, every TOML
  block, every inline `field = value`, and every field named in the design-choices table is a field
  of the training config (TrainConfig) or of the model configs (ESCNetConfig, CATSegConfig,
  CLIPConfig).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The pages MkDocs builds (mkdocs.yml's exclude_docs leaves out the study folders' raw summaries).
EXCLUDED = ("docs/studies/", "docs/benchmarks/official_catseg_2026-12-02/")
NEEDS = {"weights", "data", "gpu", "network", "long", "browser"}
EXECUTED_LANGS = {"bash", "sh", "shell", "python", "py"}
TIMEOUT_S = 240  # per block; they take a few seconds on a quiet CPU, the machine may be shared


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if not any(str(f.relative_to(ROOT)).startswith(e) for e in EXCLUDED)]


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    needs: set[str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")
_NEEDS_COMMENT = re.compile(r"^<!--\s*needs:\s*([\w ,]+?)\s*-->$")
_NEEDS_LINE = re.compile(r"^#\s*needs:\s*([\w ,]+?)\s*$")


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[\s,]+", text) if w}


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).strip()
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
        needs: set[str] = set()
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (c := _NEEDS_COMMENT.match(lines[k].strip())):
            needs |= _words(c.group(1))
        if body and (c := _NEEDS_LINE.match(body[0].strip())):
            needs |= _words(c.group(1))
        out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", needs))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for f in doc_files() for b in blocks_of(f)]


def executed_blocks() -> list[Block]:
    seen, out = set(), []
    for b in all_blocks():
        if b.lang in EXECUTED_LANGS and not b.needs and (b.lang, b.code) not in seen:
            seen.add((b.lang, b.code))
            out.append(b)
    return out


# ------------------------------------------------------------------------------------------------
# the rules on blocks


def test_docs_exist_and_have_examples():
    files = {str(f.relative_to(ROOT)) for f in doc_files()}
    assert {"README.md", "docs/index.md", "docs/design.md", "docs/inference.md"} <= files
    assert len(executed_blocks()) >= 5, "the docs should carry runnable examples"


def test_every_fence_has_a_language_and_known_needs():
    problems = []
    for b in all_blocks():
        if not b.lang:
            problems.append(f"{b.where}: a fenced block without a language (```text for plain text)")
        if b.needs - NEEDS:
            problems.append(f"{b.where}: unknown needs {sorted(b.needs - NEEDS)}; known: {sorted(NEEDS)}")
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_shows_the_cpu_torch_first():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300)"
    first_screen = "\n".join(lines[:25])
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in first_screen


@pytest.fixture(scope="module")
def sandbox_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("docs_env")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "escnet"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m escnet "$@"\n')
    shim.chmod(0o755)
    py = bin_dir / "python"
    py.symlink_to(sys.executable)
    env = dict(os.environ)
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "ESCNET_CACHE": str(base / "cache"),
        "XDG_CACHE_HOME": str(base / "xdg"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    })
    return env


@pytest.mark.parametrize("block", executed_blocks(), ids=lambda b: b.where)
def test_example_runs(block: Block, sandbox_env, tmp_path):
    for name in ("escnet", "configs"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    if block.lang in ("python", "py"):
        script = tmp_path / "example.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        script = tmp_path / "example.sh"
        script.write_text("set -euo pipefail\n" + block.code, encoding="utf-8")
        cmd = ["bash", str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=sandbox_env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{block.where}: the example failed (exit {proc.returncode}); mark it `<!-- needs: ... -->` if it "
        f"needs weights, data, a GPU or the network.\n--- code\n{block.code}--- stdout\n{proc.stdout[-3000:]}"
        f"--- stderr\n{proc.stderr[-3000:]}")


def test_a_failing_example_fails(sandbox_env, tmp_path):
    # The harness itself: a block whose command is wrong must not pass.
    script = tmp_path / "example.sh"
    script.write_text("set -euo pipefail\nescnet segment --no-such-flag\n")
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=sandbox_env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode != 0


def test_marker_parsing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""\
        <!-- needs: weights gpu -->
        ```bash
        escnet segment x.jpg --model catseg-vitl14
        ```

        ```python
        # needs: data
        print(1)
        ```

        ```bash
        escnet --help
        ```
        """))
    blocks = blocks_of(page)
    assert [(b.lang, b.needs) for b in blocks] == [("bash", {"weights", "gpu"}), ("python", {"data"}), ("bash", set())]
    assert blocks[2].line == 11


# ------------------------------------------------------------------------------------------------
# documented flags and config fields exist


def _inline_code(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    outside, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            outside.append(line)
    joined = "\n".join(outside)
    return [m.group(2) for m in re.finditer(r"(`+)(.+?)\1", joined, flags=re.S)]


def code_segments() -> list[tuple[str, str]]:
    """(where, text) for every shell-ish code line and every inline code span of the docs."""
    segs = []
    for f in doc_files():
        rel = str(f.relative_to(ROOT))
        for b in blocks_of(f):
            if b.lang in ("bash", "sh", "shell", "console", "text"):
                joined = re.sub(r"\\\n\s*", " ", b.code)  # continuation lines
                for n, line in enumerate(joined.split("\n")):
                    segs.append((f"{b.where}+{n}", re.sub(r"(^|\s)#.*$", "", line)))  # without comments
        for span in _inline_code(f.read_text(encoding="utf-8")):
            segs.append((rel, span.replace("\\|", "|")))
    return segs


_COMMAND = re.compile(r"(?<![\w./-])escnet\s+([a-z][a-z0-9-]*)(?![\w./-])")


def command_uses() -> list[tuple[str, str, str]]:
    """(where, command, the text after it up to the next command, comment, && or ;)."""
    uses = []
    for where, text in code_segments():
        matches = list(_COMMAND.finditer(text))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            rest = re.split(r"\s#|&&|;|\|\|", text[m.end():end])[0]
            uses.append((where, m.group(1), rest))
    return uses


def _parser_options() -> tuple[dict[str, set[str]], set[str]]:
    from escnet.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    return options, {o for a in parser._actions for o in a.option_strings}




def test_documented_cli_flags_exist():
    options, _ = _parser_options()
    uses = command_uses()
    assert len(uses) > 40, "expected many documented escnet commands"
    problems = []
    for where, cmd, rest in uses:
        if cmd not in options:
            # a word after "escnet" that is not a command is prose (`from escnet import ...`), unless
            # options follow it
            if re.search(r"(?<![\w-])--[A-Za-z]", rest):
                problems.append(f"{where}: `escnet {cmd}` is not a command ({', '.join(sorted(options))})")
            continue
        for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", rest):
            if flag not in options[cmd]:
                problems.append(f"{where}: `escnet {cmd} {flag}`: no such option")
    assert not problems, "\n".join(problems)


def test_flag_check_catches_a_wrong_flag():
    options, _ = _parser_options()
    assert "--classes" in options["segment"] and "--no-such-flag" not in options["segment"]


def _config_fields() -> dict[str, set[str]]:
    from escnet.training.config import TrainConfig
    from escnet.models.catseg import CATSegConfig
    from escnet.models.clip import CLIPConfig
    from escnet.models.escnet import ESCNetConfig

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    return {"train": names(TrainConfig), "model": names(ESCNetConfig) | names(CATSegConfig),
            "escnet": names(ESCNetConfig), "clip": names(CLIPConfig)}


PLACEHOLDERS = {"key"}  # `escnet train --config ... [key=value ...]`
FILE_SUFFIXES = {"onnx", "safetensors", "py", "pt", "pth", "json", "bin", "txt", "toml", "load"}


def _check_key(key: str, fields: dict[str, set[str]]) -> str | None:
    table, _, name = key.rpartition(".")
    if table in ("model", "clip"):
        return None if name in fields[table] else f"`{key}`: {table}.{name} is not a field of the {table} config"
    if table:
        return f"`{key}`: unknown table {table!r}"
    return None if key in fields["train"] else f"`{key}`: not a training config field (TrainConfig)"


def test_documented_config_fields_exist():
    fields = _config_fields()
    problems, checked = [], 0
    # key=value overrides after `escnet train`
    for where, cmd, rest in command_uses():
        if cmd != "train":
            continue
        for key in re.findall(r"(?<![\w.-])([a-z_][\w.]*)=", rest):
            if key in PLACEHOLDERS:
                continue
            checked += 1
            if (p := _check_key(key, fields)):
                problems.append(f"{where}: {p}")
    for f in doc_files():
        rel = str(f.relative_to(ROOT))
        text = f.read_text(encoding="utf-8")
        for span in _inline_code(text):
            # `model.FIELD`, `model.FIELD=value`, `clip.FIELD`
            for key in re.findall(r"(?<![\w./])((?:model|clip)\.[a-z_]\w*)(?![\w(.])", span):
                if key.rpartition(".")[2] in FILE_SUFFIXES:
                    continue  # a file name (model.safetensors, clip.py) or a function (clip.load)
                checked += 1
                if (p := _check_key(key, fields)):
                    problems.append(f"{rel}: {p}")
            # `field = value` (the TOML form of a config line)
            if (m := re.fullmatch(r"([a-z]\w*) = .+", span.strip())):
                checked += 1
                if m.group(1) not in fields["train"] | fields["model"] | fields["clip"]:
                    problems.append(f"{rel}: `{span}`: {m.group(1)} is no config field")
        for b in blocks_of(f):
            if b.lang != "toml":
                continue
            data = tomllib.loads(b.code)
            for key, value in data.items():
                if isinstance(value, dict):
                    keys = [f"{key}.{k}" for k in value]
                else:
                    keys = [key]
                for k in keys:
                    checked += 1
                    if (p := _check_key(k, fields)):
                        problems.append(f"{b.where}: {p}")
    # the design-choices table: its first column names ESCNetConfig fields
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = design.split("## 11. Design choices", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        while re.search(r"\([^()]*\)", row):
            row = re.sub(r"\([^()]*\)", "", row)  # the defaults in brackets are values, not fields
        for name in re.findall(r"`([a-z_]\w*)`", row):
            checked += 1
            if name not in fields["escnet"]:
                problems.append(f"docs/design.md design choices: `{name}` is not an ESCNetConfig field")
    assert checked > 30, f"only {checked} config keys found in the docs"
    assert not problems, "\n".join(problems)


def test_config_check_catches_a_wrong_field():
    fields = _config_fields()
    assert _check_key("model.use_sam", fields) is None and _check_key("max_iters", fields) is None
    assert _check_key("model.no_such_field", fields) and _check_key("no_such_field", fields)


def test_site_builds_strict(tmp_path):
    # The same build .ci/run does; skipped only where the docs extra is not installed.
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "No trained ESC-Net weights exist anywhere" in home
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "from_pretrained" in api  # the reference is generated from the docstrings


def test_models_table_is_the_same_in_readme_and_docs():
    def table(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        start = text.index("| name | what it is | download |")
        return text[start:text.index("\n\n", start)]

    assert table(ROOT / "README.md") == table(ROOT / "docs" / "models.md")
