"""jdjudge: fine-tune LLM judges to match the distribution of human judgments."""

__version__ = "0.1.0"
