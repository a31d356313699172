"""llmlb: one OpenAI-compatible endpoint in front of a fleet of local-LLM nodes."""

__version__ = "0.1.0"
