"""Paragraphs of Office Open XML (Word's w:p, PowerPoint's a:p) as runs, read and written with lxml.

Both dialects hold a paragraph as properties, then runs (`r`: run properties and text),
then, in PowerPoint, the end-of-paragraph properties. Word also wraps runs in hyperlinks and
smart tags, and spreads a field (page numbers, a table of contents) over several runs: a field
stays as it is, untranslated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TypeAlias

from lxml import etree

from service.api.formats.runs import Item, RunParagraph, Text, Void

XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"

# A run's style: the containers around it (outer first) and its run properties.
Style: TypeAlias = tuple[tuple[etree._Element, ...], etree._Element | None]
# A void item: an element kept whole, or one child of a run (a tab, a break, a drawing) with the run's properties.
Kept: TypeAlias = etree._Element | tuple[etree._Element | None, etree._Element]


@dataclass(frozen=True)
class Dialect:
    paragraph: str
    run: str
    properties: str
    text: str
    leading: frozenset[str]  # children that stay first (paragraph properties)
    trailing: frozenset[str]  # children that stay last
    containers: frozenset[str]  # elements whose runs are text of the paragraph
    dropped: frozenset[str]  # markers that carry nothing once the text changes
    field_parts: frozenset[str]  # a run holding one of these belongs to a field
    preserve_space: bool


WORD = Dialect(
    paragraph=f"{W}p",
    run=f"{W}r",
    properties=f"{W}rPr",
    text=f"{W}t",
    leading=frozenset({f"{W}pPr"}),
    trailing=frozenset(),
    containers=frozenset({f"{W}hyperlink", f"{W}smartTag", f"{W}dir", f"{W}bdo"}),
    dropped=frozenset({f"{W}proofErr"}),
    field_parts=frozenset({f"{W}fldChar", f"{W}instrText", f"{W}delInstrText"}),
    preserve_space=True,
)
DRAWING = Dialect(
    paragraph=f"{A}p",
    run=f"{A}r",
    properties=f"{A}rPr",
    text=f"{A}t",
    leading=frozenset({f"{A}pPr"}),
    trailing=frozenset({f"{A}endParaRPr"}),
    containers=frozenset(),
    dropped=frozenset(),
    field_parts=frozenset(),
    preserve_space=False,
)

OoxmlParagraph: TypeAlias = RunParagraph[Style, Kept]


def _key(containers: tuple[etree._Element, ...], properties: etree._Element | None) -> tuple[object, ...]:
    shells = tuple((c.tag, tuple(sorted(c.attrib.items()))) for c in containers)
    return (shells, etree.tostring(properties) if properties is not None else b"")


def read_paragraph(p: etree._Element, dialect: Dialect) -> OoxmlParagraph:
    items: list[Item[Style, Kept]] = []
    field_depth = 0

    def walk(parent: etree._Element, containers: tuple[etree._Element, ...]) -> None:
        nonlocal field_depth
        for child in parent:
            tag = child.tag
            if not isinstance(tag, str) or tag in dialect.dropped:
                continue  # comments and processing instructions carry no text
            if parent is p and tag in dialect.leading | dialect.trailing:
                continue
            if tag in dialect.containers:
                walk(child, (*containers, child))
            elif tag != dialect.run:
                items.append(Void(child))
            elif field_depth or any(sub.tag in dialect.field_parts for sub in child):
                for mark in child.iter(f"{W}fldChar"):
                    kind = mark.get(f"{W}fldCharType")
                    field_depth += 1 if kind == "begin" else -1 if kind == "end" else 0
                items.append(Void(child))
            else:
                properties = child.find(dialect.properties)
                for sub in child:
                    if sub.tag == dialect.properties:
                        continue
                    if sub.tag == dialect.text:
                        style: Style = (containers, properties)
                        items.append(Text(sub.text or "", _key(containers, properties), style))
                    else:
                        items.append(Void((properties, sub)))

    walk(p, ())
    return RunParagraph(items)


def _run(dialect: Dialect, properties: etree._Element | None) -> etree._Element:
    run = etree.Element(dialect.run)
    if properties is not None:
        run.append(copy.deepcopy(properties))
    return run


def write_paragraph(p: etree._Element, dialect: Dialect, items: list[Item[Style, Kept]]) -> None:
    """Replace the paragraph's content with `items`, its leading and trailing properties kept."""
    for child in list(p):
        if child.tag not in dialect.leading | dialect.trailing:
            p.remove(child)
    position = sum(1 for child in p if child.tag in dialect.leading)
    for item in items:
        node: etree._Element
        if isinstance(item, Void):
            if isinstance(item.item, tuple):
                properties, part = item.item
                node = _run(dialect, properties)
                node.append(part)
            else:
                node = item.item
        else:
            containers, properties = item.style
            node = _run(dialect, properties)
            text = etree.SubElement(node, dialect.text)
            text.text = item.text
            if dialect.preserve_space:
                text.set(XML_SPACE, "preserve")
            for container in reversed(containers):
                shell = etree.Element(container.tag, dict(container.attrib))
                shell.append(node)
                node = shell
        p.insert(position, node)
        position += 1
