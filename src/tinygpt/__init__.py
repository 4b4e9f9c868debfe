"""tinygpt: train, study and use small GPT language models from scratch."""

__version__ = "0.1.0"
