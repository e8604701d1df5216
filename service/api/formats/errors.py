"""The error every document format raises for a file it cannot take (a 400 naming the problem)."""


class DocumentError(ValueError):
    """The file is not what its extension says, or cannot be read."""
