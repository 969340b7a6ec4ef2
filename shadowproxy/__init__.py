"""shadowproxy: a production traffic shadowing proxy."""

__version__ = "0.1.0"
