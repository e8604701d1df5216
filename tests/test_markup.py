"""The markup engine alone (service/api/markup.py): where each element of a block goes in the
translations given to it, in HTML that stays well formed, in time linear in the block."""

from __future__ import annotations

import time
from html.parser import HTMLParser

from service.api.markup import VOID_TAGS, HtmlDocument, runs_of


class _Nesting(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.crossed = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID_TAGS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID_TAGS:
            self.crossed |= not self.open or self.open.pop() != tag


def _well_formed(html: str) -> bool:
    checker = _Nesting()
    checker.feed(html)
    checker.close()
    return not checker.crossed and not checker.open


def _render(html: str, translate: dict[str, str]) -> str:
    document = HtmlDocument(html)
    return document.render([translate[text] for text in document.texts()])


def test_a_recurring_phrase_takes_each_element_to_its_own_occurrence() -> None:
    """Each link's text recurs in the translation: before, every link went to the first occurrence,
    each inside the other."""
    html = 'Click <a href="/a">here</a> or <a href="/b">here</a>.'
    out = _render(html, {"Click here or here.": "Cliquez ici ou ici.", "here": "ici"})
    assert out == 'Cliquez <a href="/a">ici</a> ou <a href="/b">ici</a>.'


def test_elements_on_the_same_text_close_in_the_reverse_order_of_opening() -> None:
    out = _render("A <b><i>dog</i></b> runs.", {"A dog runs.": "Un chien court.", "dog": "chien"})
    assert out == "Un <b><i>chien</i></b> court."


def test_an_element_open_across_a_line_break_opens_before_the_others() -> None:
    html = '<b><a href="#">Name</a>:<br>John</b>'
    out = _render(html, {"Name:": "Nom :", "Name": "Nom", "John": "Jean"})
    assert out == '<b><a href="#">Nom</a> :<br>Jean</b>' and _well_formed(out)


def test_an_element_open_across_a_line_break_stays_outside_the_others() -> None:
    """The translation moves the words before the break: the open tag would land inside the
    italic words and cross them. It opens before them instead."""
    html = "<i>one two</i> three <b>four<br>five</b>"
    out = _render(html, {"one two three four": "THREE FOUR ONE TWO", "one two": "ONE TWO", "five": "FIVE"})
    assert out == "THREE FOUR <b><i>ONE TWO</i><br>FIVE</b>" and _well_formed(out)


def test_a_block_of_thousands_of_elements_renders_in_time() -> None:
    """Each element's place was found by scanning the words of the translation, and each tag's offset
    by joining the block's text so far: the square of the block's length (minutes at this size)."""
    html = "<p>" + "A dog <img src='x.png'> runs. " * 20_000 + "</p>"
    started = time.perf_counter()
    document = HtmlDocument(html)
    (text,) = document.texts()
    out = document.render([text.upper()])
    assert time.perf_counter() - started < 5.0
    assert out.count("<img src='x.png'>") == 20_000 and out.startswith("<p>A DOG") and _well_formed(out)


def test_a_paragraph_of_thousands_of_runs_is_cut_in_time() -> None:
    """A document paragraph's runs go back as the pieces of the translation that each covers: every
    piece scanned every run, minutes for a paragraph styled character by character."""
    assert runs_of("ab cd ef", [("outer", 0, 8), ("inner", 3, 5), ("image", 3, 3)]) == [
        ("ab ", "outer"), ("", "image"), ("cd", "inner"), (" ef", "outer"),
    ]  # fmt: skip
    text = "ab " * 20_000
    placed: list[tuple[object, int, int]] = [(n, 3 * n, 3 * n + 2) for n in range(20_000)]
    started = time.perf_counter()
    pieces = runs_of(text, [*placed, ("image", 6, 6)])
    assert time.perf_counter() - started < 2.0
    assert pieces[:6] == [("ab", 0), (" ", None), ("ab", 1), (" ", None), ("", "image"), ("ab", 2)]
    assert "".join(piece for piece, _ in pieces) == text


def test_thousands_of_elements_on_one_recurring_phrase_render_in_time() -> None:
    """Each link searched its phrase from the start of the translation again, past every occurrence
    the links before it had taken: the square of their number (14 s for 8,000 links)."""
    html = "<p>" + "Click <a href='/x'>here</a>. " * 8_000 + "</p>"
    document = HtmlDocument(html)
    block, *links = document.texts()
    started = time.perf_counter()
    out = document.render([block.replace("Click here", "Cliquez ici"), *["ici"] * len(links)])
    assert time.perf_counter() - started < 2.0
    assert out == "<p>" + "Cliquez <a href='/x'>ici</a>. " * 8_000 + "</p>"


def test_deeply_nested_and_unclosed_elements_render_in_time() -> None:
    """Each nested element's phrase, nearly as long as the block, was compiled into a regular
    expression (11 s for 2,000 levels); each element left open was checked against every other
    (6 s for 16,000)."""
    deep = "<p>" + "<b>w " * 2_000 + "x" + "</b>" * 2_000 + "</p>"
    unclosed = "<p>" + "<b>w " * 16_000 + "</p>"
    outputs = []
    for html in (deep, unclosed):
        document = HtmlDocument(html)
        texts = document.texts()
        started = time.perf_counter()
        outputs.append(document.render([text.upper() for text in texts]))
        assert time.perf_counter() - started < 2.0
    assert outputs[0] == "<p>" + "<b>W " * 2_000 + "X" + "</b>" * 2_000 + "</p>"
    assert outputs[1] == "<p>" + "<b>W " * 16_000 + "</p>"  # left open, as they came
