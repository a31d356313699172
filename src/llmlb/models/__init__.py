"""Model files, used by router and node alike: the store, the catalog, the GGUF reader,
downloads and origins (hub, URL, PyPI package), and the Ollama import."""
