"""Command-line tools (run with python -m paddlemix_qwen25vl.tools.<name>)."""
