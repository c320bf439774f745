"""Model references (``org/name``, ``org/name@rev``, local folders) -> pinned local folders with file hashes.

A Hub reference is pinned to the commit sha its revision points at *now* (``resolve_revision``, which also
records the branch or tag in the cache for offline runs), and everything after that reads at the sha, so a
branch moving mid-run cannot mix two versions. Only the files a
merge reads are fetched (weights, preferring safetensors; config; tokenizer and chat template;
sentence-transformers modules). With ``stream=True`` (what ``cocktail run`` does when nothing needs the whole
model on disk) the safetensors weights are not downloaded at all: the source carries a ``remote.HubModel`` and
the engine reads them from the Hub by range requests; only the small files go through ``snapshot_download``
into the Hugging Face cache. Otherwise everything is downloaded there, which also makes a second run and
offline mode work. Models that need their own Python code are refused: cocktail-bot never sets
``trust_remote_code``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.hub_access import HubUnreachable, RepoNotFound
from cocktail_bot.model_files import ROOT_DIRS, ROOT_FILE_PATTERNS, file_sha256
from cocktail_bot.model_types import read_config
from cocktail_bot.records import PinnedSource
from cocktail_bot.references import looks_like_path, parse_hub_reference
from cocktail_bot.remote import HubModel
from cocktail_bot.report import SourceReport

logger = logging.getLogger(__name__)

# Sentence-transformers module folders: 1_Pooling, 2_Normalize, 2_Dense, ...
MODULE_DIR = re.compile(r"^\d+_[^/]+$")
SAFETENSORS_ROOT = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
PICKLE_ROOT = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
SAFE_MODULE_TYPES = ("sentence_transformers.",)
# Files whose contents can say that a model needs its own code.
CODE_SIGNALS = ("config.json", "tokenizer_config.json", "modules.json")


class ResolvedSource(PinnedSource):
    """A model reference pinned to an exact revision, with the sha256 of each file the merge reads.

    ``path`` is None when resolved without downloading (``cocktail plan``); ``sizes`` then still tells how big
    the download and the merge input are. ``streamed`` is set when the weights stay on the Hub (``path`` then
    holds only the small files).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)  # HubModel is a dataclass

    path: Path | None
    license: str | None = None
    sizes: dict[str, int] = Field(default_factory=dict)
    streamed: HubModel | None = None
    # config.json (without downloading: the Hub's summary of it, architectures and model_type), for the type
    # and family checks of `plan` and `run`; None when unknown.
    config: dict[str, Any] | None = Field(None, exclude=True)

    @property
    def folder(self) -> Path:
        """The local folder; a source resolved without downloading (``cocktail plan``) has none."""
        if self.path is None:
            raise ValueError(f"{self.label} was resolved without downloading: it has no local folder")
        return self.path

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def model(self) -> Path | HubModel:
        """What the engine reads: the Hub model when streamed, else the local folder."""
        if self.streamed is not None:
            return self.streamed
        assert self.path is not None, f"{self.label} was resolved without its files"
        return self.path

    def to_report(self) -> SourceReport:
        return SourceReport(**self.pinned(), path=str(self.path or ""), license=self.license)


def resolve_source(
    ref: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    download: bool = True,
    stream: bool = False,
    folder: Path | None = None,
) -> ResolvedSource:
    """Pin ``ref`` (``org/name``, ``org/name@rev`` or a local folder); fetch it unless ``download=False``;
    with ``stream`` a Hub source's safetensors weights are left on the Hub, to be read in place.

    ``folder`` is where a relative path would start (a manifest's folder; the current one by default): a
    reference the Hub does not know, or could not be asked about, may be a mistyped path (``models/x``), and
    the message says that no folder of that name exists either."""
    local = _local_folder(ref)
    if local is not None:
        if revision is not None:
            raise CocktailError(f"{ref} is a local folder: a revision ({revision}) only applies to Hub repos")
        return _resolve_local(ref, local)
    hub = parse_hub_reference(ref)
    if hub is None:
        raise CocktailError(
            f"model reference {ref!r} is neither an existing folder nor a Hub repo id "
            "(use org/name, org/name@revision, or a path such as ./models/x)"
        )
    repo_id, ref_revision = hub.repo_id, hub.revision
    if ref_revision and revision and ref_revision != revision:
        raise CocktailError(
            f"{ref} names revision {ref_revision} but the revision {revision} was also given: keep one"
        )
    try:
        return _resolve_hub(
            ref,
            repo_id,
            revision or ref_revision,
            token=token,
            endpoint=endpoint,
            download=download,
            stream=stream,
        )
    except (RepoNotFound, HubUnreachable) as error:
        if ref_revision is not None:  # org/name@rev is a Hub reference, not a path
            raise
        raise _neither_folder_nor_repo(ref, repo_id, (folder or Path.cwd()) / ref, error) from None


def _neither_folder_nor_repo(
    ref: str, repo_id: str, path: Path, error: RepoNotFound | HubUnreachable
) -> CocktailError:
    """``models/nothere``: no such folder, and no such Hub repo (or no Hub to ask); one message, both fixes."""
    fixes = f"a local folder is written './{ref}' (check its path)"
    if isinstance(error, HubUnreachable):
        return RemoteError(
            f"model {ref!r} not found: there is no folder {path}, and the Hub could not be reached to look "
            f"for a repo {repo_id} ({error.reason}): {fixes}; for a Hub repo, check the network or HF_ENDPOINT"
        )
    return CocktailError(
        f"model {ref!r} not found: there is no folder {path}, and the Hub has no repo {repo_id} "
        f"({error.hidden}): {fixes}; a Hub repo as org/name (check the name, or set HF_TOKEN to a token "
        "that can read it)"
    )


def needed_files(names: Iterable[str]) -> list[str]:
    """The files of a model folder or repo that a merge reads, sorted; safetensors weights win over pickles.

    Pure: works on a remote listing before anything is downloaded. Weights in other formats (TF, Flax, ONNX,
    GGUF, ...) and everything else (README, training scripts, images) are left out.
    """
    names = sorted(set(names))
    chosen = [n for n in names if "/" not in n and _matches(n, ROOT_FILE_PATTERNS)]
    chosen += [n for n in names if n.split("/", 1)[0] in ROOT_DIRS and "/" in n]
    chosen += _weights([n for n in names if "/" not in n])
    module_files: dict[str, list[str]] = {}
    for name in names:
        top, _, rest = name.partition("/")
        if rest and MODULE_DIR.match(top):
            module_files.setdefault(top, []).append(rest)
    for folder, files in module_files.items():
        weights = _weights(files)
        chosen += [f"{folder}/{f}" for f in files if f in weights or not _is_weight(f)]
    return sorted(set(chosen))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _is_weight(name: str) -> bool:
    return name.endswith(
        (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".ckpt")
    ) or name.endswith(".index.json")


def _weights(names: list[str]) -> list[str]:
    """Top-level weight files of one folder: safetensors when there are any, else PyTorch pickles."""
    for patterns in (SAFETENSORS_ROOT, ("*.safetensors",), PICKLE_ROOT):
        found = [n for n in names if "/" not in n and _matches(n, patterns)]
        if found:
            return found
    return []


def custom_code_reason(contents: dict[str, bytes], names: Iterable[str]) -> str | None:
    """Why a model needs its own Python code (None when it does not).

    ``contents`` holds what is known of the files in ``CODE_SIGNALS``; ``names`` are the files a merge reads,
    where a ``.py`` file (a custom sentence-transformers module) is a signal too.
    """
    for name in ("config.json", "tokenizer_config.json"):
        data = _json_or_none(contents.get(name))
        if isinstance(data, dict) and data.get("auto_map"):
            return f"its {name} has an auto_map ({', '.join(sorted(data['auto_map']))})"
    modules = _json_or_none(contents.get("modules.json"))
    if isinstance(modules, list):
        custom = [
            str(m.get("type"))
            for m in modules
            if isinstance(m, dict) and not str(m.get("type", "")).startswith(SAFE_MODULE_TYPES)
        ]
        if custom:
            return f"its modules.json uses custom modules ({', '.join(custom)})"
    python = sorted(n for n in names if n.endswith(".py"))
    if python:
        return f"it ships Python code ({', '.join(python)})"
    return None


def _json_or_none(content: bytes | None):
    if content is None:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


def _refuse_custom_code(where: str, reason: str | None) -> None:
    if reason:
        raise CocktailError(
            f"{where} needs custom code to load ({reason}); cocktail-bot never runs code from a model "
            "(no trust_remote_code): use a model that loads with the standard transformers classes"
        )


# -- local folders -------------------------------------------------------------------------------------------


def _local_folder(ref: str) -> Path | None:
    """The folder a reference names, or None for a Hub id; a missing path that looks local is an error."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if looks_like_path(ref):
        raise CocktailError(f"model folder {ref} does not exist (a Hub repo is named org/name)")
    return None


def _resolve_local(ref: str, folder: Path) -> ResolvedSource:
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    chosen = needed_files(names)
    where = f"model folder {ref}"
    _refuse_custom_code(where, custom_code_reason(_config_contents(folder), chosen))
    _check_model_files(where, chosen)
    return ResolvedSource(
        label=ref,
        repo_id=None,
        requested_revision=None,
        resolved_revision=None,
        path=folder,
        files={n: file_sha256(folder / n) for n in chosen},
        sizes={n: (folder / n).stat().st_size for n in chosen},
        config=read_config(folder),
    )


def _check_model_files(where: str, chosen: list[str]) -> None:
    if not any(_is_weight(n) and not n.endswith(".index.json") for n in chosen):
        raise CocktailError(
            f"{where} has no model weights: expected model.safetensors or pytorch_model.bin (or their shards)"
        )
    if "config.json" not in chosen:
        raise CocktailError(f"{where} has no config.json: it is not a transformers model")


# -- Hub repos -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """A repo's files at one commit: name -> (size, LFS sha256 or None); config and license when online."""

    files: dict[str, tuple[int, str | None]]
    config: dict | None = None
    license: str | None = None


def _resolve_hub(
    label: str,
    repo_id: str,
    revision: str | None,
    *,
    token: str | None,
    endpoint: str | None,
    download: bool,
    stream: bool,
) -> ResolvedSource:
    from huggingface_hub import HfApi, constants, snapshot_download

    from cocktail_bot.hub_access import hub_errors, with_retries

    where = f"{repo_id}@{revision}" if revision else repo_id
    offline = constants.is_offline_mode()
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision, reading=True, token=token):
        sha = with_retries(lambda: _pin(api, repo_id, revision, offline=offline), f"resolving {where}")
        listing = _listing(api, repo_id, sha, offline=offline)
    chosen = needed_files(listing.files)
    pinned = f"Hub repo {where} (commit {sha})"
    config = {"config.json": json.dumps(listing.config).encode()} if listing.config else {}
    _refuse_custom_code(pinned, custom_code_reason(config, chosen))
    _check_model_files(pinned, chosen)
    lfs_hashes = {n: sha256 for n in chosen if (sha256 := listing.files[n][1])}
    sizes = {n: listing.files[n][0] for n in chosen}
    streamed = _streamable(chosen, lfs_hashes) if stream and not offline else {}
    path, files, model = None, dict(lfs_hashes), None
    if download:
        with hub_errors(repo_id, sha, reading=True, token=token):
            folder = snapshot_download(
                repo_id,
                revision=sha,
                allow_patterns=[n for n in chosen if n not in streamed],
                token=token,
                endpoint=endpoint,
                local_files_only=offline,
            )
        path = Path(folder)
        _refuse_custom_code(pinned, custom_code_reason(_config_contents(path), chosen))
        files = {n: lfs_hashes.get(n) or file_sha256(path / n) for n in chosen}
        if streamed:
            weights = {n: (sizes[n], sha256) for n, sha256 in streamed.items()}
            model = HubModel(path, repo_id, sha, weights, endpoint=endpoint, token=token)
    logger.info(
        "pinned %s to %s (%d files, %.1f MB%s)",
        where,
        sha,
        len(chosen),
        sum(sizes.values()) / 1e6,
        ", weights read from the Hub" if model is not None else "",
    )
    return ResolvedSource(
        label=label,
        repo_id=repo_id,
        requested_revision=revision,
        resolved_revision=sha,
        path=path,
        files=files,
        license=listing.license,
        sizes=sizes,
        streamed=model,
        config=(read_config(path) if path is not None else None) or listing.config,
    )


def _pin(api, repo_id: str, revision: str | None, *, offline: bool) -> str:
    """The commit ``revision`` points at on the Hub now, recorded in the cache's refs/ for offline runs.

    Online, only the Hub's answer counts: ``resolve_revision`` would fall back to a cached ref when the Hub
    errors, and with a restored cache one blip would pin a branch to an old commit and write it into the lock.
    Offline (``HF_HUB_OFFLINE``), the cached ref is what was asked for.
    """
    if offline:
        return api.resolve_revision(repo_id, revision=revision, local_files_only=True).resolved
    sha = api.repo_info(repo_id, revision=revision).sha
    from huggingface_hub import constants
    from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    try:  # best effort, as the client does it: the cache may be read-only
        _cache_commit_hash_for_specific_revision(str(storage), revision or constants.DEFAULT_REVISION, sha)
    except OSError as error:
        logger.warning("could not record %s@%s in the Hugging Face cache: %s", repo_id, revision, error)
    return sha


def _streamable(chosen: list[str], lfs_hashes: dict[str, str]) -> dict[str, str]:
    """The weight files to read in place (name -> pinned sha256): all of them when they are safetensors with
    an LFS sha256 to check against; none otherwise (pickles cannot be read by range: they are downloaded)."""
    weights = [n for n in chosen if _is_weight(n) and not n.endswith(".index.json")]
    if all(n.endswith(".safetensors") and n in lfs_hashes for n in weights):
        return {n: lfs_hashes[n] for n in weights}
    logger.info("weights %s cannot be read in place: downloading them", ", ".join(weights))
    return {}


def _listing(api, repo_id: str, sha: str, *, offline: bool) -> _Listing:
    """The files at ``sha`` from the Hub, or from the tree the cache kept of an earlier download when offline.

    Offline, the license is unknown: it comes from the Hub's card data, which is not cached.
    """
    from huggingface_hub import get_cached_repo_tree

    from cocktail_bot.hub_access import with_retries

    if offline:
        tree = get_cached_repo_tree(repo_id, revision=sha)
        return _Listing({f.path: (f.size or 0, f.lfs.sha256 if f.lfs else None) for f in tree})
    info = with_retries(
        lambda: api.model_info(repo_id, revision=sha, files_metadata=True), f"reading {repo_id}"
    )
    files = {s.rfilename: (s.size or 0, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
    license_ = (info.card_data or {}).get("license") if info.card_data is not None else None
    return _Listing(files, info.config, license_ if isinstance(license_, str) else None)


def _config_contents(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in CODE_SIGNALS if (folder / n).is_file()}
