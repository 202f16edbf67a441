"""Write each component's ``README.md`` from its docstring (``Args:`` say what each input means) and signature:
``python -m components.readme``.

``--check`` writes nothing and fails when a README differs from what would be written (CI runs it
through ``tests/components``).
"""

import argparse
import inspect
import sys
import typing
from pathlib import Path

import docstring_parser

from components import COMPONENTS, component, images

ROOT = Path(__file__).resolve().parent


def _type_name(annotation) -> str:
    """``str``, ``dict``, or ``Output[Metrics]`` for KFP's ``Annotated[Metrics, OutputAnnotation]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        artifact, *marks = typing.get_args(annotation)
        direction = "Output" if any("Output" in getattr(m, "__name__", str(m)) for m in marks) else "Input"
        return f"{direction}[{artifact.__name__}]"
    return annotation.__name__


def readme(name: str) -> str:
    """The README of component ``name``: what it does, where it runs, its inputs and outputs."""
    function = component(name).python_func
    signature = inspect.signature(function)
    docstring = docstring_parser.parse(inspect.getdoc(function) or "")
    meanings = {param.arg_name: " ".join(param.description.split()) for param in docstring.params}
    undocumented = set(signature.parameters) - set(meanings)
    if undocumented:
        raise ValueError(f"component {name}: no Args: entry for {sorted(undocumented)}")
    description = "\n\n".join(filter(None, (docstring.short_description, docstring.long_description)))
    gpu = component(name).component_spec.implementation.container.image == images.IMAGE
    image = "the GPU (CUDA) image, `SHERLOCK_IMAGE`" if gpu else "the CPU image, `SHERLOCK_CPU_IMAGE`"
    lines = [f"# `{name}`", "", description, "",
             f"Runs in {image} at compile time; defined in [component.py](component.py).", "",
             "| input | type | meaning |", "|---|---|---|"]
    for parameter in signature.parameters.values():
        lines.append(f"| `{parameter.name}` | `{_type_name(parameter.annotation)}` | {meanings[parameter.name]} |")
    returned = signature.return_annotation
    outputs = getattr(returned, "__annotations__", None)
    if outputs:
        lines += ["", "| output | type |", "|---|---|"] + [f"| `{key}` | `{value.__name__}` |"
                                                       for key, value in outputs.items()]
    elif returned is not inspect.Signature.empty:
        lines += ["", f"Returns: `{returned.__name__}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every component's README; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a README is out of date; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name in COMPONENTS:
        path, text = ROOT / name / "README.md", readme(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python -m components.readme):\n" + "\n".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
