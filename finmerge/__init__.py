"""finmerge: finance LLMs without instruction data (continual pretraining + instruction-vector merge)."""

__version__ = "0.1.0"
