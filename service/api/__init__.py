"""The HTTP service: FastAPI app, request scheduler, LibreTranslate-compatible and native routes."""
