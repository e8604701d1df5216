"""Names: a titled name travels verbatim; a name-only segment the model nearly copied comes back as it was."""

from __future__ import annotations

from service.runtime.names import keep_name, name_like
from service.runtime.protect import protect


def test_a_title_and_the_name_after_it_are_held_out() -> None:
    protected = protect("Yesterday Dr. Ehud Ur and Mrs. Jones met Prof. Ada M. Lovelace.")
    assert protected.spans == ["Dr. Ehud Ur", "Mrs. Jones", "Prof. Ada M. Lovelace"]
    assert protect("The dr. said no.").spans == []  # lower case: not a title


def test_name_only_segments_keep_the_name_when_the_model_slips() -> None:
    assert name_like("John Smith") and name_like("J. R. Tolkien") and not name_like("Paris")
    assert not name_like("John smith") and not name_like("John Smith is here")
    assert keep_name("John Smith", "John Smithe") == "John Smith"
    assert keep_name("Marie Curie", "Mary Curie") == "Marie Curie"
    # a real translation of a title-case segment stands
    assert keep_name("Good Morning", "Bonjour") == "Bonjour"
    assert keep_name("Red Cross", "Croix-Rouge") == "Croix-Rouge"
    assert keep_name("A man", "Un homme") == "Un homme"
