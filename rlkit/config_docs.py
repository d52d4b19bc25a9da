"""Generate docs/config.md from the config dataclasses: each field's comment in config.py is its only doc.

    python -m rlkit.config_docs > docs/config.md      (a test fails when docs/config.md is stale)
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys

from rlkit import config as C
from rlkit.config_ranges import range_of


def _comments(cls) -> dict[str, str]:
    src = inspect.getsource(cls)
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _default(f) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(v):
            return "(section)"
        if isinstance(v, list) and v and dataclasses.is_dataclass(v[0]):
            return "[" + ", ".join("{" + ", ".join(f"{k}: {x!r}" for k, x in dataclasses.asdict(i).items() if x) + "}" for i in v) + "]"
        return repr(v)
    return ""


def render(root=C.GRPOConfig, title: str = "GRPO (`rlkit grpo`)") -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `rlkit/config.py` by `python -m rlkit.config_docs` (the field comments there are the only",
        "source; a test fails when this file is stale). Configs are YAML; any key can be overridden on the command",
        "line with a dotted path: `rlkit grpo --config FILE trainer.lr=3e-4 rollout.n=4`. Unknown keys, wrong",
        "types and values outside the `allowed` column (ranges: `rlkit/config_ranges.py`; every float must also be",
        "finite) stop the run when the config is loaded, before anything starts, with one line naming the key.",
        "",
        f"## {title}",
        "",
    ]
    sections = []

    def table(cls, prefix):
        comments = _comments(cls)
        rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            typ = C._hints(cls)[f.name]
            if dataclasses.is_dataclass(typ):
                sections.append((f"{prefix}{f.name}", typ))
                rows.append(f"| `{prefix}{f.name}` | (section) |  | see below |")
                continue
            item = C.LIST_ITEM_TYPES.get((cls.__name__, f.name))
            if item is not None:
                sections.append((f"{prefix}{f.name}[]", item))
            d = _default(f).replace("|", "\\|")
            key = f"{prefix}{f.name}"
            allowed = range_of(cls.__name__, f.name) or " \\| ".join(C.CHOICES.get(key.replace("[]", ""), ()))
            rows.append(f"| `{prefix}{f.name}` | `{d}` | {allowed} | {comments.get(f.name, '')} |")
        return rows

    lines += table(root, "")
    while sections:
        name, cls = sections.pop(0)
        lines += ["", f"### `{name}`", ""] + table(cls, f"{name}.")
    if root is C.GRPOConfig:
        from rlkit.drivers.ablation import AblationSection

        lines += ["", "## Ablation (`rlkit ablation`)", "",
                  "A GRPO config (every key above, shared by both runs) plus an `ablation:` section; see docs/ablation.md.",
                  "", "### `ablation`", ""] + table(AblationSection, "ablation.")
        while sections:
            name, cls = sections.pop(0)
            lines += ["", f"### `{name}`", ""] + table(cls, f"{name}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
