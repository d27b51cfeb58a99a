"""The README and the guide in docs/ say what the code does: every YAML snippet is a spec that
`samplewise validate` accepts (a partial one on top of a small complete spec), every Python
snippet compiles and imports only what exists, every command in the README is one the Makefile
or the `samplewise` command takes (the `samplewise lr` lines and the Python example run against
an export), and every relative link points at a file of the repository."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from services.cli import main as cli
from tests.conftest import ROOT, spec_dict

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[str, str]]:
    """(``page:line``, body) of every fenced block of ``lang`` in the pages."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(2)))
    return out


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("where,body", blocks("yaml"), ids=[w for w, _ in blocks("yaml")])
def test_every_yaml_snippet_is_a_valid_spec(where, body, tmp_path, monkeypatch, capsys):
    data = yaml.safe_load(body)
    assert isinstance(data, dict), where
    spec = data if "name" in data else {**spec_dict(), **data}  # a partial snippet: its sections on a small spec
    path = tmp_path / "snippet.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(ROOT)  # a snippet's package.module:function is imported from the project
    code = cli.main(["validate", str(path)])
    assert code == 0, f"{where}: {capsys.readouterr().err}"


@pytest.mark.parametrize("where,body", blocks("python"), ids=[w for w, _ in blocks("python")])
def test_every_python_snippet_compiles_and_its_imports_exist(where, body):
    tree = compile(body, where, "exec", flags=0x400, dont_inherit=True)  # PyCF_ONLY_AST
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"


def readme_commands() -> list[list[str]]:
    out = []
    for where, body in blocks("sh"):
        if not where.startswith("README.md"):
            continue
        for line in body.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(shlex.split(line))
    return out


def _quickstart_export(folder: Path) -> None:
    """An export with the quickstart's groups, for the README's lookups to run against."""
    consts = [
        {
            "optimizer": opt,
            "reduction": red,
            "rule": rule,
            "k": k,
            "lr_per_sample": c,
            "formula": f"lr = {c} * batch_size**{k}",
            "batch_sizes_swept": [16, 256],
        }
        for opt, rule, k, c in (("sgd", "linear", 1.0, 4e-3), ("adam", "sqrt", 0.5, 5e-3))
        for red in ("mean", "sum")
    ]
    (folder / "exports").mkdir()
    (folder / "exports" / "quickstart.json").write_text(json.dumps({"sweep": "quickstart", "constants": consts}))


def test_every_readme_command_is_one_the_makefile_or_the_cli_takes(tmp_path, monkeypatch, capsys):
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split())
    commands = readme_commands()
    assert [c for c in commands if c[0] == "make"], "the README shows no make command"
    _quickstart_export(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if command[0] == "make":
            for word in command[1:]:
                assert "=" in word or word in targets, f"README: make {word} is not a target"
        elif command[0] == "samplewise":
            with contextlib.redirect_stdout(io.StringIO()):
                args = cli.build_parser().parse_args(command[1:])  # SystemExit on a flag it does not take
            if args.command == "lr":
                assert cli.main(command[1:]) == 0, capsys.readouterr().err
                assert capsys.readouterr().out.startswith("lr = ")
        else:
            pytest.fail(f"README: a command that is neither make nor samplewise: {' '.join(command)}")


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    (where, body), *_ = [b for b in blocks("python") if b[0].startswith("README.md")]
    _quickstart_export(tmp_path)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(body, where, "exec"), scope)
    assert scope["lr"] == pytest.approx(4e-3 * 192)


def test_every_relative_link_points_at_a_file():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for page in PAGES:
        for target in link.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to {target}, which does not exist"
