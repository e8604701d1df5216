"""Chains of served directions: where no model translates a→b, a chain a→x→…→b may (pivoting, as
LibreTranslate's argostranslate does it).

A direct direction always wins; otherwise the shortest chain; among chains of one length, one
through the pivot language (MTSERVE_PIVOT, default en) wins, then the alphabetically first, so the
choice never depends on the order models were listed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

Route = tuple[str, ...]  # languages from source to target: (de, en, fr) is de→en, then en→fr


def legs(route: Route) -> list[tuple[str, str]]:
    return list(itertools.pairwise(route))


def _preference(route: Route, pivot: str | None) -> tuple[bool, Route]:
    return (pivot not in route[1:-1], route[1:-1])


def _best_from(source: str, edges: dict[str, list[str]], pivot: str | None) -> dict[str, Route]:
    """The preferred shortest route from `source` to each language it reaches, breadth first.
    Keeping one route per language is exact: a preferred route's prefix is preferred too."""
    best: dict[str, Route] = {source: (source,)}
    frontier = [source]
    while frontier:
        reached: dict[str, Route] = {}
        for language in frontier:
            for target in edges.get(language, []):
                if target in best:
                    continue
                route = best[language] + (target,)
                if target not in reached or _preference(route, pivot) < _preference(reached[target], pivot):
                    reached[target] = route
        best.update(reached)
        frontier = sorted(reached)
    return best


def routes(directions: Iterable[tuple[str, str]], pivot: str | None) -> dict[tuple[str, str], Route]:
    """(source, target) -> the route that serves it: the direct directions, plus, unless `pivot` is
    None (pivoting off), every pair a chain of them reaches."""
    direct = list(dict.fromkeys(directions))
    out: dict[tuple[str, str], Route] = {d: d for d in direct}
    if pivot is None:
        return out
    edges: dict[str, list[str]] = {}
    for source, target in direct:
        edges.setdefault(source, []).append(target)
    for source in sorted(edges):
        for target, route in _best_from(source, edges, pivot).items():
            if target != source and (source, target) not in out:
                out[(source, target)] = route
    return out
