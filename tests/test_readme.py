"""The README's Python snippets run as written, in order, in one namespace (the front door must not lie)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_snippets_run(capsys):
    blocks = snippets()
    assert len(blocks) >= 5, "the README lost its quick start"
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md, python block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "tensor" in out  # the printed mode weights and log-likelihoods
