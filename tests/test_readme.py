"""The README's Python examples run as written (documentation that matches the code)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "Error" not in out


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
