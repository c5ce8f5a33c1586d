"""The public surface: one import path (`from keel import ...`) and one error base."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import keel
from keel.shared import errors

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_keel_raises_is_a_keel_error_and_importable_from_keel() -> None:
    raised = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    ]
    assert len(raised) >= 14
    for cls in raised:
        assert issubclass(cls, keel.KeelError), cls
        assert getattr(keel, cls.__name__) is cls, cls


def test_no_other_exception_classes_hide_in_keels_packages() -> None:
    # Every exception a user could catch is declared once, in keel/shared/errors.py (Unwind and
    # ModelsExhausted are internal: the workflow turns them into a report).
    internal = {"Unwind", "ModelsExhausted"}
    found = []
    for path in [
        *ROOT.glob("workflows/**/*.py"),
        *ROOT.glob("activities/**/*.py"),
        *ROOT.glob("keel/**/*.py"),
    ]:
        for name in re.findall(
            r"^class (\w+)\((?:\w+Error|Exception|ValueError)\b", path.read_text(), re.M
        ):
            if path.name != "errors.py" and name not in internal:
                found.append(f"{path.relative_to(ROOT)}: {name}")
    assert found == []


def test_the_readme_imports_keels_names_from_keel() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    imports = [
        line for b in blocks for line in b.splitlines() if line.startswith(("from ", "import "))
    ]
    assert any(line.startswith("from keel import") for line in imports)
    own = [line for line in imports if line.split()[1].split(".")[0] in ("workflows", "activities")]
    assert own == []
    names = {
        n.strip()
        for line in imports
        if line.startswith("from keel import")
        for n in line.split("import")[1].split(",")
    }
    assert names <= set(keel.__all__), names - set(keel.__all__)
