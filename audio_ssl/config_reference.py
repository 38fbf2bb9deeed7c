"""The configuration reference (``docs/configuration.md``), generated from the typed config.

Every section of a YAML file given with ``--config`` is one of the frozen dataclasses of
:mod:`audio_ssl.config`; this module lists their fields with type, the default of each preset
and the comment written beside the field in the code, so the reference cannot drift from what
the loader accepts (``tests/test_docs.py`` checks the page equals this output)::

    python -m audio_ssl.config_reference > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from audio_ssl import config

_FIELD = re.compile(r"^\s{4}(\w+)\s*:\s*[^=#]+?(?:=\s*[^#]*)?(?:#\s*(.*))?$")


def _comments(cls: type) -> dict[str, str]:
    """{field: the comment beside it, or on the lines just above it} from ``cls``'s source."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", "return", '"""')):
            name, beside = match.group(1), match.group(2)
            out[name] = " ".join(above + ([beside] if beside else []))
            above = []
        elif not line.startswith(" " * 8):
            above = []
    return out


def _type_name(tp: object) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _value(v: object) -> str:
    return f"`{v!r}`" if isinstance(v, str) else f"`{v}`"


def _rows(prefix: str, presets: dict[str, object], out: list[str], sections: list) -> None:
    first = next(iter(presets.values()))
    cls = type(first)
    hints = typing.get_type_hints(cls)
    notes = {}
    for klass in reversed(cls.__mro__[:-1]):
        notes.update(_comments(klass))
    rows = []
    for f in dataclasses.fields(cls):
        values = {name: getattr(p, f.name) for name, p in presets.items()}
        if dataclasses.is_dataclass(values[next(iter(values))]):
            sections.append((f"{prefix}.{f.name}".lstrip("."), values))
            continue
        shown = " / ".join(dict.fromkeys(_value(v) for v in values.values()))
        if len(set(map(repr, values.values()))) > 1:
            shown = " / ".join(f"{k}: {_value(v)}" for k, v in values.items())
        rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {shown} | "
                    f"{notes.get(f.name, '').replace('|', '/')} |")
    if rows:
        doc = inspect.getdoc(cls) or ""
        out += [f"### `{prefix}`" if prefix else "### top level", ""]
        if doc and not doc.startswith(cls.__name__ + "("):
            out += [doc.split("\n\n")[0].replace("\n", " "), ""]
        out += ["| field | type | default | what |", "|---|---|---|---|", *rows, ""]


def _tree(title: str, presets: dict[str, object], intro: str) -> list[str]:
    out = [f"## {title}", "", intro, ""]
    sections = [("", presets)]
    while sections:
        prefix, values = sections.pop(0)
        found: list = []
        _rows(prefix, values, out, found)
        sections = found + sections
    return out


def markdown() -> str:
    """The whole reference page."""
    pre = {name: config.preset(name) for name in config.PRESETS}
    fine = {name: config.finetune_preset(name) for name in config.FINETUNE_PRESETS}
    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed config (`python -m audio_ssl.config_reference >"
        " docs/configuration.md`); do not edit by hand.",
        "A YAML file given with `--config` overrides any field of the preset (`--preset`); an"
        " unknown key or a wrong type is refused with one line naming it. Where presets differ,"
        " each one's default is shown.",
        "",
        "```yaml",
        "# configs/base_gpu.yaml",
        "model: {context: {layer_drop: 0.1}}",
        "data: {max_batch_samples: 1400000}",
        "optim: {lr: 0.0005}",
        "train: {max_steps: 400000, checkpoint_every: 5000}",
        "```",
        "",
        *_tree("Pretraining (`audio-ssl pretrain --config`)", pre,
               "Presets: " + ", ".join(f"`{n}`" for n in pre) + "."),
        *_tree("Fine-tuning (`audio-ssl finetune --config`)", fine,
               "Presets: " + ", ".join(f"`{n}`" for n in fine) + ". The `model` section is the "
               "pretrained checkpoint's network, replaced by what the checkpoint holds."),
    ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
