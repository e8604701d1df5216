"""How the markup engine's time grows with a paragraph's elements, shape by shape: `python
bench/markup_shapes.py [--sizes 1000 2000 4000] [--shapes NAME ...]`.

Each shape is a paragraph of N elements of one kind (nested, siblings, left open, misnested, on
one recurring word, ...). The paragraph is read, and then rendered with its texts upper-cased as
their translations; the time printed is the rendering's (service/api/markup.py places the
elements there), milliseconds per size, with how many texts the paragraph gives to translate.
Time that doubles with the size is linear; a shape whose time quadruples or worse is one a
request at the limits can use to hold a core (docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.api.markup import HtmlDocument  # noqa: E402

SHAPES: dict[str, Callable[[int], str]] = {
    "nested": lambda n: "<p>" + "<b>w " * n + "x" + "</b>" * n + "</p>",
    "siblings": lambda n: "<p>" + "<b>w</b> " * n + "</p>",
    "left open": lambda n: "<p>" + "<b>w " * n + "</p>",
    "misnested": lambda n: "<p>" + "<b>a <i>b</b> c</i> " * n + "</p>",
    "line breaks": lambda n: "<p>" + "<b>w<br>x</b> " * n + "</p>",
    "open across line breaks": lambda n: "<p>" + "<b>w<br>" * n + "</p>",
    "paragraphs": lambda n: "<p>w <i>x</i></p>" * n,
    "table cells": lambda n: "<table><tr>" + "<td>w <b>x</b></td>" * n + "</tr></table>",
    "nested lists": lambda n: "<ul><li>w " * n + "</li></ul>" * n,
    "empty elements": lambda n: "<p>w" + "<span></span>" * n + "</p>",
    "one recurring word": lambda n: "<p>" + "<b>dog</b> dog " * n + "</p>",
}


def render_seconds(html: str) -> tuple[float, int]:
    document = HtmlDocument(html)
    texts = document.texts()
    started = time.perf_counter()
    document.render([text.upper() for text in texts])
    return time.perf_counter() - started, len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000], help="elements per paragraph")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = parser.parse_args()
    for name in args.shapes:
        cells = []
        for size in args.sizes:
            seconds, texts = render_seconds(SHAPES[name](size))
            cells.append(f"{size}: {seconds * 1000:.0f} ms ({texts} texts)")
        print(f"{name:24s}", " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
