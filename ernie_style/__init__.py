"""ernie-style: ERNIE 2.0-style continual multi-task pretraining of transformer encoders."""

__version__ = "0.1.0"
