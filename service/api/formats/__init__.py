"""Document formats for /translate_file: each reads its paragraphs as runs and writes them back."""
