"""``python -m bench NAME [ARGS]``: run one benchmark; ``python -m bench --list`` names them all.

A benchmark is a module of this package with a ``main(argv)``; NAME is its module name
(``serve``, ``serve_profile``; ``serve-profile`` works too) and ARGS go to it unchanged, so
``python -m bench serve --help`` shows its options. ``python -m bench.serve`` still runs
the same ``main``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    """Every benchmark (a module with a ``main``; the others are its parts) and the first
    sentence of its docstring, read without importing it: it may import TensorFlow."""
    found = {}
    for path in sorted(HERE.glob("[!_]*.py")):
        source = path.read_text()
        if "\ndef main(" not in source:
            continue
        doc = source.split('"""', 2)[1] if source.startswith('"""') else ""
        first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0]
        found[path.stem] = first.split(": ", 1)[1] if first.startswith("``python -m") else first
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named benchmark with the rest of the arguments, or list them."""
    args, known = list(sys.argv[1:] if argv is None else argv), benchmarks()
    if not args or args[0] in ("-h", "--help", "--list"):
        if not args or args[0] != "--list":
            print(__doc__.strip(), end="\n\n")
        width = max(map(len, known))
        print("\n".join(f"{name:<{width}}  {about}" for name, about in known.items()))
        return 0
    name = args[0].replace("-", "_")
    if name not in known:
        print(f"no benchmark {args[0]!r}; python -m bench --list names them", file=sys.stderr)
        return 2
    sys.argv = [f"python -m bench {name}", *args[1:]]
    importlib.import_module(f"bench.{name}").main()  # each reads sys.argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
