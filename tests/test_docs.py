"""The documentation: the site builds (mkdocs --strict), every ```python block of README.md and
docs/*.md runs offline, and the facts that can drift (defaults, figures) match the code.

Convention for runnable docs: the blocks of one page run in order in one namespace, in a
temporary directory, with W&B offline; a block preceded by the line ``<!-- no-test -->`` is
skipped (it needs network, a GPU or a dataset). Pages are discovered, so new pages are covered.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
NO_TEST = "<!-- no-test -->"


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code) of the ```python blocks of ``page`` that are not marked no-test."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = [line.strip() for line in text[: m.start()].splitlines() if line.strip()]
        if before and before[-1] == NO_TEST:
            continue
        out.append((text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_pages_are_discovered():
    names = {_id(p) for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/getting-started.md", "docs/methods.md"} <= names
    assert python_blocks(ROOT / "README.md"), "the README's callback example must run"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_id)
def test_python_blocks_run_offline(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for line, code in python_blocks(page):
            try:
                exec(compile(code, f"{_id(page)}:{line}", "exec"), namespace)
            except Exception as err:  # noqa: BLE001 - say which block failed
                raise AssertionError(f"{_id(page)}, block at line {line} failed: {err!r}") from err
    finally:
        torch.set_num_threads(threads)


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "api" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "insertion_deletion" in api and "CAMCallback" in api  # rendered from the docstrings


def _yaml_text(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_cam_defaults_table_matches_the_config():
    text = (ROOT / "docs" / "app.md").read_text()
    block = text.split("<!-- cam-defaults:start")[1].split("<!-- cam-defaults:end -->")[0]
    documented = dict(re.findall(r"^\| `cam\.([\w.]+)` \| `(.*)` \|$", block, re.M))
    config = yaml.safe_load((ROOT / "conf" / "cam" / "default.yaml").read_text())
    expected = {k: _yaml_text(v) for k, v in config.items() if k != "_target_"}
    rows = "\n".join(f"| `cam.{k}` | `{v}` |" for k, v in expected.items())
    assert documented == expected, f"docs/app.md's cam=default table is out of date; it should read:\n{rows}"


def test_callback_option_defaults_match_the_signature():
    from lightning_cam import CAMCallback

    params = inspect.signature(CAMCallback.__init__).parameters
    text = (ROOT / "docs" / "callback.md").read_text()
    table = text.split("## Options")[1].split("\n\n")[1]
    documented = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in table.splitlines()[2:])))
    missing = [p for p in params if p != "self" and p not in documented]
    assert not missing, f"docs/callback.md's option table lacks {missing}"
    checked = 0
    for name, default in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M):
        if name not in params:
            continue
        value = default.strip().strip("`")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
        assert value == params[name].default, f"callback.md says {name}={value!r}, the code {params[name].default!r}"
        checked += 1
    assert checked >= 8


def test_every_figure_has_the_command_that_made_it():
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.(?:png|svg|jpg))\)", line):
                near = " ".join(lines[i : i + 4])
                # the command that wrote it, or the copy of a run's output made by a command shown above
                assert re.search(r"`(?:python|cp) [^`]*" + re.escape(Path(target).name), near), (
                    f"{_id(page)}:{i + 1}: figure {target} needs the command that produced it next to it"
                )
                assert (page.parent / target).is_file(), f"{_id(page)}:{i + 1}: {target} does not exist"


def test_readme_is_short_and_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def _numbers_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_numbers", ROOT / "bench" / "docs_numbers.py")
    numbers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(numbers)
    return numbers


def test_quoted_numbers_equal_the_benchmark_records():
    """Every `<!-- numbers:NAME[:VIEW] -->` block of the docs is the rendering of docs/numbers/NAME.json,
    the file the command named in the record wrote (bench/docs_numbers.py)."""
    numbers = _numbers_module()
    found = 0
    for page in PAGES:
        for name, view, body in numbers.blocks(page.read_text()):
            label = name + (f":{view}" if view else "")
            assert body == numbers.render(name, view), f"{_id(page)}: the numbers:{label} block is stale; run python bench/docs_numbers.py"
            found += 1
    assert found >= 1


def test_every_number_block_has_a_record_that_names_its_command():
    """A block without a record, a record without its command and date, or a record no page quotes
    would let a figure drift from what the command prints."""
    numbers = _numbers_module()
    used = set()
    for page in PAGES:
        text = page.read_text()
        opened = text.count("<!-- numbers:")
        found = numbers.blocks(text)
        assert opened == len(found) == text.count("<!-- /numbers -->"), f"{_id(page)}: an unclosed or malformed numbers block"
        for name, _, _ in found:
            assert (numbers.NUMBERS / f"{name}.json").is_file(), f"{_id(page)}: numbers:{name} has no docs/numbers/{name}.json"
            used.add(name)
    for path in sorted(numbers.NUMBERS.glob("*.json")):
        record = numbers.record(path.stem)
        assert isinstance(record.get("command"), str) and record["command"].startswith("python "), f"{path.name}: no command"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record.get("date", "")), f"{path.name}: no date"
        for label, run in record.get("runs", {}).items():
            assert str(run.get("command", "")).startswith("python train.py"), f"{path.name}: run {label} names no command"
        if "runs" in record:
            assert record.get("tolerance"), f"{path.name}: a run record states the reproducibility it observed"
        if record.get("kind") in ("table", "text"):
            assert record.get("provenance"), f"{path.name}: say where figures that were not rerun come from"
        assert path.stem in used, f"{path.name} is quoted by no page"


def test_counts_that_go_stale_are_not_written_in_prose():
    for page in PAGES:
        for i, line in enumerate(page.read_text().splitlines(), 1):
            assert not re.search(r"\b\d+ tests\b|`test_\w+\.py` \(\d+[,)]", line), (
                f"{_id(page)}:{i}: a test count goes stale; point at `pytest --collect-only -q` instead"
            )


def test_record_run_reads_a_run_folder(tmp_path):
    """bench/record_run.py keeps the chosen keys of metrics.json, the CSV history and the log lines,
    and measures the spread of repeats."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("record_run", ROOT / "bench" / "record_run.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 0.5, "cam/x/pointing_game": 0.25, "other": 1.0},
                                                       "seconds": 12.34}))
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/acc,cam/x/pointing_game\n0,9,0.25,\n0,9,,0.5\n1,19,0.5,0.25\n")
    (tmp_path / "train.log").write_text("[2026][x][INFO] - CAMCallback: insertion/deletion on 8 of 32\nother\n")
    got = rec.read_run(tmp_path, ["val/acc", "cam/.*/pointing_game"], ["insertion/deletion on"], ["val/acc"])
    assert got["metrics"] == {"cam/x/pointing_game": 0.25, "val/acc": 0.5, "seconds": 12.3}
    assert got["history"] == {"val/acc": {"0": 0.25, "1": 0.5}}
    assert got["log_lines"] == ["CAMCallback: insertion/deletion on 8 of 32"]
    assert rec.spread([{"a": 1.0, "seconds": 3.0}, {"a": 1.5, "seconds": 9.0}]) == {"a": 0.5, "seconds": 6.0}
    assert rec.is_timing("seconds") and rec.is_timing("cam/liftcam/seconds") and not rec.is_timing("val/acc")
