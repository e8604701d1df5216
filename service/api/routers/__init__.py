"""One router per file: LibreTranslate-compatible, native v1, operations, the web page."""
