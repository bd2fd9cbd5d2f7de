"""What several test modules share, one module per concern (test modules never import each other).

- ``paths``: the repository's folders.
- ``scripts``: import a script of examples/, external_ops/ or benchmarks/ by its path.
- ``reference``: tiny random transformers models and inputs that match them (parity tests).
- ``checkpoints``: the tiny Paddle model with the demo tokenizer (fine-tuning tests).
- ``data``: images and SFT datasets on disk.
- ``media``: tokenizer files, test videos, a local HTTP server (preprocessing tests).
- ``finetune``: the fine-tuning script run in this process, its losses caught.
- ``tensor_parallel``: the workload of the tensor-parallel checks and the workers' environment.

Fixtures used by several modules live in ``tests/conftest.py``.
"""
