"""Pure, bounded parsers: GGUF headers, logs, health answers, SSE streams."""
