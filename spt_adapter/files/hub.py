"""Share SPT adapters as folders and Hugging Face Hub repositories (extra ``hub``).

    model.save_pretrained("swinir_x4_spt")                    # spt_adapter.safetensors + README.md
    model.push_to_hub("me/swinir-x4-spt", private=True)         # one commit
    model = spt_adapter.from_pretrained(backbone, "me/swinir-x4-spt")   # or a local folder

A shared adapter is a folder with ``spt_adapter.safetensors`` (only the unit tensors, with the
header described in :mod:`spt_adapter.files.format`) and a model card ``README.md``; nothing of the
backbone. Downloads go through ``huggingface_hub.hf_hub_download`` and its cache; offline mode
(``HF_HUB_OFFLINE=1``) reads the cache only. ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and
``HF_HUB_CACHE`` are read at call time, so setting them after import works too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.nn as nn

from ..errors import AdapterFileError, SPTError
from .format import ADAPTER_FILENAME, MODEL_CARD_FILENAME, TRAINING_KEY
from .model_card import write_model_card

__all__ = ["ADAPTER_FILENAME", "from_pretrained", "push_to_hub", "save_pretrained"]

_TRUE = {"1", "on", "yes", "true"}


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - depends on the environment
        raise SPTError("sharing adapters on the Hub needs huggingface_hub: pip install 'spt-adapter[hub]'") from None
    return huggingface_hub


def _hub_error(name: str) -> type[BaseException]:
    """An exception class of huggingface_hub by name (``errors`` since 0.23, ``utils`` before)."""
    import importlib

    _hub()
    for module in ("errors", "utils"):
        try:
            mod = importlib.import_module(f"huggingface_hub.{module}")
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if cls is not None:
            return cls
    return type(f"_Missing{name}", (Exception,), {})


def _validate_repo_id(repo_id: str) -> None:
    _hub()
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") > 1:
        raise ValueError("a repo id is 'namespace/name'")
    validate_repo_id(repo_id)


def _offline() -> bool:
    """Offline mode: ``HF_HUB_OFFLINE`` as set now, else as huggingface_hub read it at import."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None and value.strip():
        return value.strip().lower() in _TRUE
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover
        return False


def _endpoint(endpoint: str | None) -> str | None:
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def _hub_reachable(endpoint: str | None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds (one try).
    huggingface_hub retries a refused or timed-out request five times with back-off (~25 s) before
    giving up; this answers at once. Behind a proxy (``*_PROXY`` set) the direct test says nothing,
    so it is skipped (True)."""
    import socket
    from urllib.parse import urlsplit

    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    url = urlsplit(endpoint or "https://huggingface.co")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    if cache_dir is not None:
        return str(cache_dir)
    return os.environ.get("HF_HUB_CACHE") or None


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
def save_pretrained(
    model,
    save_directory: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    backbone_hash: bool = True,
    training: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write one adapter of ``model`` (an SPTModel) into ``save_directory``.

    Writes ``spt_adapter.safetensors`` (unit tensors only, checked header) and a model card
    ``README.md``, each atomically; nothing of the backbone. ``training`` (JSON-able dict, e.g.
    ``{"data": "DF2K", "task": "sr:4", "steps": 20000}``) is recorded in the file and the card.
    Returns the folder.
    """
    from ..core.model import SPTModel
    from .format import save_adapter

    if not isinstance(model, SPTModel):
        raise AdapterFileError(
            f"save_pretrained needs an SPTModel (from spt_adapter.inject), got {type(model).__name__}"
        )
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise AdapterFileError(f"{folder} exists and is not a folder; save_pretrained writes a folder")
    extra: dict[str, str] = {}
    if training is not None:
        if not isinstance(training, dict):
            raise AdapterFileError(
                f"training must be a dict (e.g. {{'data': 'DF2K', 'task': 'sr:4'}}), got {type(training).__name__}"
            )
        try:
            extra[TRAINING_KEY] = json.dumps(training, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise AdapterFileError(f"training must be JSON-serialisable: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(
        model, folder / ADAPTER_FILENAME, adapter_name=adapter_name, backbone_hash=backbone_hash, metadata=extra or None
    )
    write_model_card(folder, repo_id=repo_id)
    return folder


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def looks_local(source: str) -> bool:
    """Whether an adapter ``source`` that does not exist is a mistyped local path rather than a Hub id.

    A Hub id is exactly ``namespace/name``. Anything else is a path: a name with no ``/`` or more
    than one, one starting with ``.``, ``/`` or ``~``, holding a backslash, ending in
    ``.safetensors``, or whose first part is a folder here (``runs/typo`` when ``runs/`` exists).
    Only the rest goes to the Hub, so a typo is reported at once as a missing path."""
    if source.startswith((".", "/", "~")) or "\\" in source or source.endswith(".safetensors"):
        return True
    parts = source.split("/")
    if len(parts) != 2 or not all(parts):
        return True
    return Path(parts[0]).expanduser().is_dir()


def resolve_adapter_file(
    source: str | os.PathLike,
    revision: str | None = None,
    *,
    filename: str = ADAPTER_FILENAME,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool | None = None,
    force_download: bool = False,
) -> Path:
    """The local path of an adapter file: from a folder, a file, or a Hub repo (downloaded into the cache)."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        present = sorted(p.name for p in path.iterdir())
        hint = ""
        if "adapter_config.json" in present:
            hint = (
                " It looks like a PEFT adapter folder: load it with peft.PeftModel.from_pretrained after "
                "`import spt_adapter.peft`, or convert it with spt_adapter.peft.peft_to_spt()."
            )
        raise AdapterFileError(f"folder {path} has no {filename} (it holds {present[:8]}).{hint}")
    if path.exists():
        return path  # a file, or something else that read_adapter_header refuses by name
    source = str(source)
    if looks_local(source):
        raise AdapterFileError(
            f"{source} does not exist: no adapter folder or file there (a Hub id is 'namespace/name' "
            "whose namespace is not a local folder)"
        )
    hub = _hub()
    try:
        _validate_repo_id(source)
    except Exception as exc:  # HFValidationError
        raise AdapterFileError(f"{source!r} is neither an existing folder nor a valid Hub repo id ({exc})") from None
    offline = bool(local_files_only) or _offline()
    unreachable = not offline and not _hub_reachable(_endpoint(endpoint))
    try:
        downloaded = hub.hf_hub_download(
            repo_id=source,
            filename=filename,
            revision=revision,
            cache_dir=_cache_dir(cache_dir),
            token=token,
            endpoint=_endpoint(endpoint),
            local_files_only=offline or unreachable,
            force_download=force_download,
            library_name="spt-adapter",
        )
    except _hub_error("LocalEntryNotFoundError") as exc:
        where = f"revision {revision!r} of " if revision else ""
        reached = (
            f"the Hub ({_endpoint(endpoint) or 'huggingface.co'}) cannot be reached"
            if unreachable
            else f"the Hub could not be reached ({type(exc).__name__})"
        )
        raise AdapterFileError(
            f"there is no local folder or file {source} (relative to {os.getcwd()}), and {filename} of {where}Hub repo "
            f"{source!r} is not in the Hub cache ({_cache_dir(cache_dir) or 'default cache'}): "
            + (
                "offline mode is on (HF_HUB_OFFLINE=1 / local_files_only=True): download it once online"
                if offline
                else reached
            )
        ) from None
    except _hub_error("RevisionNotFoundError"):
        raise AdapterFileError(f"repo {source!r} has no revision {revision!r}") from None
    except _hub_error("RepositoryNotFoundError"):
        raise AdapterFileError(
            f"Hub repo {source!r} does not exist or is private (pass token=), and there is no "
            f"local path {source} either"
        ) from None
    except _hub_error("EntryNotFoundError"):
        raise AdapterFileError(f"Hub repo {source!r} has no file {filename}; is it an SPT adapter repo?") from None
    return Path(downloaded)


def from_pretrained(
    backbone: nn.Module,
    source: str | os.PathLike,
    revision: str | None = None,
    adapter_name: str = "default",
    *,
    filename: str = ADAPTER_FILENAME,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool | None = None,
    force_download: bool = False,
    check_backbone_hash: bool = True,
    device=None,
):
    """Load a shared adapter onto ``backbone`` and return the SPTModel.

    ``source``: a local folder (from :func:`save_pretrained`), an adapter file, or a Hub repo id
    ``"user/repo"`` (at ``revision``: branch, tag or commit). Hub files are downloaded with
    ``huggingface_hub.hf_hub_download`` into its cache; with ``HF_HUB_OFFLINE=1`` or
    ``local_files_only=True`` only the cache is read. The adapter header is checked against the
    backbone (fingerprint, and the backbone weights' sha256 unless ``check_backbone_hash=False``)
    before any tensor is loaded; on error ``backbone`` is left untouched.
    """
    from .format import load_adapter

    path = resolve_adapter_file(
        source,
        revision,
        filename=filename,
        cache_dir=cache_dir,
        token=token,
        endpoint=endpoint,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    return load_adapter(
        backbone, path, adapter_name=adapter_name, check_backbone_hash=check_backbone_hash, device=device
    )


# ---------------------------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------------------------
def push_to_hub(
    model,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    adapter_name: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    backbone_hash: bool = True,
    training: dict[str, Any] | None = None,
    exist_ok: bool = True,
):
    """Upload one adapter of ``model`` to the Hub repo ``repo_id`` in a single commit.

    The repo is created if needed (``private`` applies then). The commit holds
    ``spt_adapter.safetensors`` and ``README.md`` exactly as :func:`save_pretrained` writes them.
    Returns huggingface_hub's ``CommitInfo`` (``.oid``, ``.commit_url``).
    """
    hub = _hub()
    if _offline():
        raise SPTError("push_to_hub cannot run in offline mode (HF_HUB_OFFLINE=1)")
    try:
        _validate_repo_id(repo_id)
    except Exception as exc:
        raise SPTError(f"{repo_id!r} is not a valid Hub repo id ({exc})") from None
    api = hub.HfApi(endpoint=_endpoint(endpoint), token=token)
    with tempfile.TemporaryDirectory(prefix="spt_push_") as tmp:
        folder = save_pretrained(
            model, tmp, adapter_name, backbone_hash=backbone_hash, training=training, repo_id=repo_id
        )
        api.create_repo(repo_id=repo_id, private=private, exist_ok=exist_ok, repo_type="model")
        operations = [
            hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=(folder / name).read_bytes())
            for name in (ADAPTER_FILENAME, MODEL_CARD_FILENAME)
        ]
        name = adapter_name or model.active_adapter
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload SPT adapter {name!r} ({type(model.base_model).__name__})",
        )
