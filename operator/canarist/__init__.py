"""canarist: progressive delivery for AI-backed services on Kubernetes."""

__version__ = "0.1.0"
