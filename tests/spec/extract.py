"""Keep, from OpenAI's published OpenAPI document, the operations llmlb serves.

    python tests/spec/extract.py path/to/openapi.json COMMIT > tests/spec/openai-served.json

The source is the ``openapi.json`` of https://github.com/openai/openai-openapi at COMMIT. Every
schema the kept operations reach (through ``$ref``) is kept with them, as it is; nothing is
edited, so the tests check llmlb against the document OpenAI publishes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SERVED = {
    "/chat/completions": ["post"],
    "/completions": ["post"],
    "/embeddings": ["post"],
    "/models": ["get"],
    "/models/{model}": ["get"],
    "/responses": ["post"],
}


def refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value))
    return set()


def main() -> None:
    source, commit = sys.argv[1], sys.argv[2]
    with open(source) as file:
        document = json.load(file)
    paths = {path: {m: document["paths"][path][m] for m in methods}
             for path, methods in SERVED.items()}  # fmt: skip
    kept: dict[str, Any] = {}
    pending = refs(paths)
    while pending:
        ref = pending.pop()
        section, name = ref.split("/")[2:4]
        if name in kept.setdefault(section, {}):
            continue
        kept[section][name] = document["components"][section][name]
        pending |= refs(kept[section][name])
    out = {
        "openapi": document["openapi"],
        "info": {**document["info"],
                 "x-source": f"github.com/openai/openai-openapi@{commit}, openapi.json"},
        "servers": document["servers"],
        "paths": paths,
        "components": {**{k: v for k, v in document["components"].items()
                          if k == "securitySchemes"}, **kept},
        "security": document.get("security", []),
    }  # fmt: skip
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
