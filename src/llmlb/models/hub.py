"""Catalog entries from Hugging Face: a model named as people name it (Ollama's
``hf.co/ORG/REPO:Q4_K_M``, a ``https://huggingface.co/.../x.gguf`` link, ``ORG/REPO/x.gguf``)
becomes a catalog entry the fleet distributes like any other.

The repository's files come from the hub's tree API (one listing: names, sizes, and the
sha256 of each LFS file); the quantisation asked for picks the file (Q4_K_M when none is
asked and the repository has it), a split GGUF (``-00001-of-00003.gguf``) becomes an entry
with parts, and the header of the first file is read with Range requests, a few MiB of a
file of many GiB: architecture, context length, the KV cache per token, the chat template,
whether it embeds. ``HF_ENDPOINT`` and ``HF_TOKEN`` apply, as for downloads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson

from llmlb.common.errors import BadRequest, LlmlbError, NotFound, UpstreamFailed
from llmlb.common.names import is_model_name
from llmlb.models.catalog import QUANT_IN_NAME, Capability, CatalogEntry
from llmlb.models.gguf import GGUFError, GGUFIncomplete, GGUFInfo, read_gguf_header
from llmlb.models.memory import kv_bytes_per_token_of

# The default when no quantisation is asked: the first of these the repository has.
PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0", "BF16", "F16")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
_HOSTS = ("hf.co", "huggingface.co", "www.huggingface.co")
# Architectures whose models embed rather than generate (llama.cpp's encoders).
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                     "modern-bert", "neo-bert", "t5encoder"})  # fmt: skip
HEADER_FIRST_READ = 2 << 20  # bytes; doubled while the header goes on
HEADER_MAX_READ = 64 << 20
LISTING_MAX_PAGES = 20


class HubRefused(LlmlbError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "hub_refused"


@dataclass(frozen=True)
class HubRef:
    """A model as named on the hub: its repository, and a quantisation or a file in it."""

    repo: str
    quant: str | None = None
    file: str | None = None
    revision: str = "main"

    def describe(self) -> str:
        what = f"/{self.file}" if self.file else f":{self.quant}" if self.quant else ""
        return f"hf.co/{self.repo}{what}"


def parse_reference(text: str) -> HubRef:
    """``hf.co/ORG/REPO[:QUANT]``, ``huggingface.co/...``, a ``https://huggingface.co/ORG/REPO
    /(resolve|blob)/REV/FILE.gguf`` link, ``ORG/REPO/FILE.gguf`` or ``ORG/REPO[:QUANT]``."""
    text = text.strip()
    if len(text) > 500 or any(ord(c) < 33 for c in text):
        raise BadRequest("not a model on the hub: too long, or with spaces", param="model")
    rest = text
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or (parts.hostname or "") not in _HOSTS:
            raise BadRequest(f"{text[:100]!r} is not a Hugging Face link", param="model")
        rest = unquote(parts.path).lstrip("/")
    else:
        for host in _HOSTS:
            if rest.lower().startswith(host + "/"):
                rest = rest[len(host) + 1 :]
                break
    segments = rest.split("/")
    if len(segments) >= 5 and segments[2] in ("resolve", "blob"):
        repo, revision, file = "/".join(segments[:2]), segments[3], "/".join(segments[4:])
        return _checked(HubRef(repo, file=file, revision=revision))
    if len(segments) >= 3:
        return _checked(HubRef("/".join(segments[:2]), file="/".join(segments[2:])))
    repo, _, quant = rest.partition(":")
    return _checked(HubRef(repo, quant=quant or None))


def _checked(ref: HubRef) -> HubRef:
    if not _REPO.fullmatch(ref.repo) or ".." in ref.repo:
        raise BadRequest(f"{ref.repo[:100]!r} is not a repository (ORG/REPO)", param="model")
    if ref.file is not None and (not ref.file.endswith(".gguf") or ".." in ref.file.split("/")):
        raise BadRequest(f"{ref.file[:100]!r} is not a GGUF file", param="model")
    if not re.fullmatch(r"[\w.-]{1,100}", ref.revision) or set(ref.revision) == {"."}:
        raise BadRequest(f"{ref.revision[:100]!r} is not a revision", param="model")
    return ref


def quant_of(path: str) -> str | None:
    """The quantisation a GGUF file's name says (``...-Q4_K_M.gguf`` -> ``Q4_K_M``)."""
    found = QUANT_IN_NAME.findall(path.rsplit("/", 1)[-1])
    return found[-1].upper() if found else None


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str | None


def choose(ref: HubRef, files: list[HubFile]) -> tuple[list[HubFile], str]:
    """The file(s) of the model ``ref`` names (a split model's parts in order), and how it
    was chosen (said to the operator)."""
    ggufs = [f for f in files if f.path.endswith(".gguf") and "mmproj" not in f.path.lower()]
    if not ggufs:
        raise BadRequest(f"{ref.describe()} has no GGUF file", param="model", code="no_gguf")
    if ref.file is not None:
        first = next((f for f in ggufs if f.path == ref.file), None)
        if first is None:
            raise BadRequest(f"{ref.describe()}: no such GGUF file in the repository",
                             param="model", code="no_gguf")  # fmt: skip
        return _with_parts(first, ggufs), f"the file {first.path}"
    by_quant: dict[str, list[HubFile]] = {}
    for candidate in sorted(ggufs, key=lambda f: f.path):
        match = _SPLIT.search(candidate.path)
        if match is not None and match.group(1) != "00001":
            continue  # a later part: found through its first
        by_quant.setdefault(quant_of(candidate.path) or "", []).append(candidate)
    if ref.quant is not None:
        chosen = by_quant.get(ref.quant.upper())
        if not chosen:
            have = ", ".join(sorted(q for q in by_quant if q)) or "none named"
            raise BadRequest(f"{ref.describe()}: no {ref.quant} file (it has: {have})",
                             param="model", code="no_gguf")  # fmt: skip
        return _with_parts(chosen[0], ggufs), f"{ref.quant.upper()}, as asked"
    for quant in PREFERRED_QUANTS:
        if quant in by_quant:
            return _with_parts(by_quant[quant][0], ggufs), f"{quant}, the default"
    first = min((f for group in by_quant.values() for f in group), key=lambda f: f.size)
    return _with_parts(first, ggufs), f"{quant_of(first.path) or first.path}, the smallest"


def _with_parts(first: HubFile, ggufs: list[HubFile]) -> list[HubFile]:
    match = _SPLIT.search(first.path)
    if match is None:
        return [first]
    count = int(match.group(2))
    stem = first.path[: match.start()]
    parts = []
    for index in range(1, count + 1):
        wanted = f"{stem}-{index:05d}-of-{count:05d}.gguf"
        part = next((f for f in ggufs if f.path == wanted), None)
        if part is None:
            raise BadRequest(f"{first.path}: part {index} of {count} is missing from the "
                             "repository", param="model", code="no_gguf")  # fmt: skip
        parts.append(part)
    return parts


def projector_of(files: list[HubFile]) -> HubFile | None:
    """The repository's multimodal projector (``mmproj-*.gguf``): it sees images. F16 where
    there are several, as llama.cpp's own vision repositories ship it."""
    found = sorted((f for f in files if f.path.endswith(".gguf") and "mmproj" in f.path.lower()),
                   key=lambda f: (quant_of(f.path) != "F16", f.path))  # fmt: skip
    return found[0] if found else None


def default_name(files: list[HubFile]) -> str:
    """A store name from the file's name: lower case, without ``.gguf`` or a part suffix."""
    stem = files[0].path.rsplit("/", 1)[-1]
    stem = _SPLIT.sub("", stem).removesuffix(".gguf").lower()
    stem = re.sub(r"[^a-z0-9._-]", "-", stem).strip("._-")[:128]
    if not is_model_name(stem):
        raise BadRequest(f"no model name can be made from {files[0].path!r}: give one",
                         param="name")  # fmt: skip
    return stem


def capabilities_of(info: GGUFInfo) -> list[Capability]:
    """What the model can do, as far as its header tells."""
    if info.architecture in EMBEDDING_ARCHITECTURES or info.arch_value("pooling_type"):
        return ["embedding"]
    found: list[Capability] = ["chat", "completion"]
    template = info.chat_template or ""
    if "tools" in template:
        found.append("tools")
    if "<think>" in template or "reasoning" in template:
        found.append("reasoning")
    return found


def entry_for(ref: HubRef, files: list[HubFile], info: GGUFInfo, name: str,
              aliases: list[str], projector: HubFile | None = None) -> CatalogEntry:  # fmt: skip
    """The catalog entry of the chosen file(s), with what the header says (and the
    projector, which makes it a vision model)."""
    first = files[0]
    kv = kv_bytes_per_token_of(info)
    data: dict[str, Any] = {
        "name": name, "aliases": aliases,
        "description": f"{ref.repo} ({quant_of(first.path) or first.path}), from Hugging Face",
        "origin": {"hub": {"repo": ref.repo, "file": first.path, "revision": ref.revision}},
        "size_bytes": sum(f.size for f in files),
        "context_length": info.context_length, "chat_template": info.chat_template,
        "kv_bytes_per_token": kv or None, "capabilities": capabilities_of(info),
        "tags": ["hub", info.architecture] if info.architecture else ["hub"],
    }  # fmt: skip
    if projector is not None and "embedding" not in data["capabilities"]:
        data["mmproj"] = {"file": projector.path, "size_bytes": projector.size,
                          "sha256": projector.sha256}  # fmt: skip
    if len(files) == 1:
        data["sha256"] = first.sha256
    else:
        data["parts"] = [{"file": f.path.rsplit("/", 1)[-1], "size_bytes": f.size,
                          "sha256": f.sha256} for f in files]  # fmt: skip
    return CatalogEntry.model_validate(data)


class Hub:
    """The hub's API and files, over the caller's aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @staticmethod
    def _endpoint_and_headers() -> tuple[str, dict[str, str]]:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        headers = {k: v for k, v in build_hf_headers().items() if k.lower() != "user-agent"}
        return constants.ENDPOINT.rstrip("/"), headers

    async def files(self, ref: HubRef) -> list[HubFile]:
        """Every file of the repository at the revision (the tree API, page by page)."""
        endpoint, headers = self._endpoint_and_headers()
        url: str | None = (f"{endpoint}/api/models/{ref.repo}/tree/"
                           f"{quote(ref.revision, safe='')}?recursive=true")  # fmt: skip
        found: list[HubFile] = []
        for _ in range(LISTING_MAX_PAGES):
            if url is None:
                break
            try:
                async with self._session.get(url, headers=headers) as response:
                    await _refused(response, ref)
                    page = orjson.loads(await response.read())
                    following = response.links.get("next")
                    url = str(following["url"]) if following is not None else None
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                raise UpstreamFailed(f"the hub did not list {ref.repo}: {exc}") from exc
            for item in page if isinstance(page, list) else []:
                if isinstance(item, dict) and item.get("type") == "file" and _plain_path(item):
                    lfs = item.get("lfs") or {}
                    found.append(HubFile(str(item.get("path")), int(item.get("size") or 0),
                                         lfs.get("oid") if lfs else None))  # fmt: skip
        return found

    async def header(self, ref: HubRef, file: HubFile) -> tuple[GGUFInfo, str | None]:
        """The GGUF header of ``file``, read from its start with Range requests, and the
        commit the hub served it from (``X-Repo-Commit``), to pin the entry to: a file
        uploaded again under the same name later is then not mistaken for this one."""
        endpoint, headers = self._endpoint_and_headers()
        url = f"{endpoint}/{ref.repo}/resolve/{quote(ref.revision, safe='')}/{file.path}"
        size = HEADER_FIRST_READ
        while True:
            want = min(size, file.size)
            try:
                async with self._session.get(
                    url, headers={**headers, "range": f"bytes=0-{want - 1}"}
                ) as response:
                    await _refused(response, ref)
                    commit = response.headers.get("x-repo-commit")
                    head = await _first_bytes(response, want)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamFailed(f"the hub did not send {file.path}: {exc}") from exc
            try:
                info = read_gguf_header(head, file.size, file.path)
            except GGUFIncomplete:
                if want >= file.size or size >= HEADER_MAX_READ:
                    limit = f"{HEADER_MAX_READ >> 20} MiB"
                    raise BadRequest(f"{file.path}: its GGUF header is larger than {limit}",
                                     param="model") from None  # fmt: skip
                size *= 2
            except GGUFError as exc:
                raise BadRequest(f"{file.path} is not a usable GGUF file: {exc}",
                                 param="model") from exc  # fmt: skip
            else:
                pinned = commit if commit and re.fullmatch(r"[0-9a-f]{40}", commit) else None
                return info, pinned


def _plain_path(item: dict[str, Any]) -> bool:
    """A listed file's path is one we would ask for again: relative, no ``..``, sane."""
    path = item.get("path")
    return (isinstance(path, str) and 0 < len(path) <= 500 and not path.startswith("/")
            and ".." not in path.split("/") and not any(ord(c) < 32 for c in path))  # fmt: skip


async def _first_bytes(response: aiohttp.ClientResponse, count: int) -> bytes:
    """At most ``count`` bytes of the body (a server that ignores Range sends all of it: the
    rest is never read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        parts.append(chunk[: count - size])
        size += len(parts[-1])
        if size >= count:
            break
    return b"".join(parts)


async def _refused(response: aiohttp.ClientResponse, ref: HubRef) -> None:
    """The hub's refusals, as what they mean to the operator."""
    if response.status in (200, 206):
        return
    code = response.headers.get("x-error-code", "")
    if response.status == 404 or code in ("RepoNotFound", "RevisionNotFound"):
        raise NotFound(f"{ref.describe()}: the hub has no such repository or revision",
                       code="repository_not_found")  # fmt: skip
    if response.status in (401, 403) or code == "GatedRepo":
        raise HubRefused(f"{ref.describe()}: the hub refused access (a gated or private "
                         "repository: set HF_TOKEN for the router)")  # fmt: skip
    raise UpstreamFailed(f"the hub answered {response.status} for {ref.describe()}")
