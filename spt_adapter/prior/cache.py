"""Content-addressed on-disk cache of masks and encoded priors.

Layout under ``root``::

    masks/ab/<mask key>.sptc     the provider's masks for one image (one int32 label image + region records)
    priors/cd/<prior key>.sptc   one encoding of those masks, float32 (C, H, W)

``mask key = sha256(image key + provider identity)``, where the image key is the sha256 of the
decoded pixels (as the HxWx3 uint8 the provider sees) plus their shape and dtype, and the
identity is the provider's JSON (model type, checkpoint sha256, every setting that changes the
masks). ``prior key = sha256(mask key + encoding)``. A new encoding of an image whose masks are
cached therefore never reruns SAM.

Each entry is ``MAGIC + sha256(payload) + payload`` with ``payload`` a ``np.savez_compressed``
archive (no pickle). Format 2 stores masks as :class:`~spt_adapter.prior.masks.LabelMasks` columns
(``labels``, ``area``, ``score``, ``bbox``, ``extra.*``); format 1 stored one bit-packed boolean
image per mask. A format-1 entry is recomputed with a one-line ``RuntimeWarning`` (never read,
never a crash); format-1 priors sit under other keys (the key holds the format) and are ignored.

What a provider returns is checked before anything is written: it must be (or convert to)
``LabelMasks`` of the image's height and width, else :class:`~spt_adapter.errors.ProviderError`;
an exception inside the provider becomes :class:`~spt_adapter.errors.ProviderRunError` naming the
provider and its plugin. Writes go through :func:`spt_adapter._io.atomic_write_bytes` (temporary file
+ rename), so several processes may fill the same cache at once: readers never see half a file,
and two writers of one key write the same bytes. An entry whose checksum, header or contents do
not verify is reported with a ``RuntimeWarning`` and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes
from ..errors import CorruptEntry, ProviderError, ProviderRunError, SPTError
from ..pixels import to_rgb_uint8
from .encode import DEFAULT_ENCODING, encode_masks, parse_encoding
from .masks import LabelMasks, as_label_masks
from .registry import describe_provider

MAGIC = b"SPTPRIOR2\n"
FORMAT = 2
OLD_MAGICS = {b"SPTPRIOR1\n": 1}


class OldFormatEntry(CorruptEntry):
    """An entry written by an older cache format (recomputed)."""


def image_key(image) -> str:
    img = to_rgb_uint8(image)
    h = hashlib.sha256()
    h.update(f"{img.shape}|{img.dtype.str}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _identity_json(provider) -> str:
    return json.dumps(provider.identity(), sort_keys=True, separators=(",", ":"), default=str)


def _pack(arrays: dict, meta: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, __meta__=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **arrays
    )
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _unpack(data: bytes) -> tuple[dict, dict]:
    for old, version in OLD_MAGICS.items():
        if data.startswith(old):
            raise OldFormatEntry(f"written in cache format {version} (this version reads format {FORMAT})")
    if not data.startswith(MAGIC):
        raise CorruptEntry("not an spt-adapter cache entry (bad header)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if len(digest) < 32 or hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry("checksum mismatch (truncated or modified)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except Exception as exc:  # pragma: no cover - a valid checksum over a bad archive
        raise CorruptEntry(f"unreadable archive ({exc})") from exc
    return arrays, meta


class PriorCache:
    """``PriorCache(root)``: ``get_or_compute(image, provider, encoding=DEFAULT_ENCODING) -> (C, H, W) float32``.

    ``stats`` counts ``prior_hits`` (encoded prior read), ``mask_hits`` (masks read, encoding
    recomputed), ``computed`` (provider ran), ``corrupt`` (bad entries replaced) and ``old_format``
    (entries of an older cache format replaced).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = {"prior_hits": 0, "mask_hits": 0, "computed": 0, "corrupt": 0, "old_format": 0}
        self._ids: dict[int, tuple[object, str]] = {}

    def __repr__(self) -> str:
        return f"PriorCache({str(self.root)!r})"

    def remove_stale_temporaries(self, older_than: float) -> int:
        """Remove temporary files of entry writes cut short (kill -9: ``.<key>.sptc.<random>.tmp``, our
        own naming only) last modified before ``older_than`` (a time.time()); returns how many. A write in
        progress touches its file within milliseconds, so a margin before a run's start spares those of
        a concurrent shard."""
        removed = 0
        for kind in ("masks", "priors"):
            base = self.root / kind
            if not base.is_dir():
                continue
            for shard in base.iterdir():
                if not shard.is_dir():
                    continue
                for entry in os.scandir(shard):
                    name = entry.name
                    if not (name.startswith(".") and name.endswith(".tmp") and ".sptc." in name):
                        continue
                    try:
                        if (
                            entry.is_file(follow_symlinks=False)
                            and entry.stat(follow_symlinks=False).st_mtime < older_than
                        ):
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    # -- keys
    def _identity(self, provider) -> str:
        hit = self._ids.get(id(provider))
        if hit is None or hit[0] is not provider:
            hit = (provider, _identity_json(provider))
            self._ids[id(provider)] = hit
        return hit[1]

    def mask_key(self, image, provider) -> str:
        return hashlib.sha256(f"masks|{image_key(image)}|{self._identity(provider)}".encode()).hexdigest()

    def prior_key(self, image, provider, encoding: str = DEFAULT_ENCODING) -> str:
        parse_encoding(encoding)
        return self._prior_key(self.mask_key(image, provider), encoding)

    @staticmethod
    def _prior_key(mask_key: str, encoding: str) -> str:
        return hashlib.sha256(f"prior|{mask_key}|{encoding}|v{FORMAT}".encode()).hexdigest()

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.sptc"

    def contains(self, image, provider, encoding: str = DEFAULT_ENCODING) -> bool:
        return self._path("priors", self.prior_key(image, provider, encoding)).is_file()

    # -- entries
    def _read(self, path: Path, expect: dict):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            arrays, meta = _unpack(data)
            for k, v in expect.items():
                if meta.get(k) != v:
                    raise CorruptEntry(f"entry is for another {k}")
        except OldFormatEntry as exc:
            self.stats["old_format"] += 1
            warnings.warn(f"prior cache entry {path} was {exc}; recomputing it", RuntimeWarning, stacklevel=3)
            return None
        except CorruptEntry as exc:
            self.stats["corrupt"] += 1
            warnings.warn(f"prior cache entry {path} is corrupt ({exc}); recomputing it", RuntimeWarning, stacklevel=3)
            return None
        return arrays

    def _write(self, path: Path, arrays: dict, meta: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _pack(arrays, meta))

    def load_prior(self, key: str):
        got = self._read(self._path("priors", key), {"key": key})
        return None if got is None else got["prior"]

    def get_masks(self, image, provider) -> LabelMasks:
        """The provider's masks for ``image`` (read from the cache, or computed, checked and stored)."""
        img = to_rgb_uint8(image)
        key = self.mask_key(img, provider)
        path = self._path("masks", key)
        got = self._read(path, {"key": key})
        masks = self._masks_from(got, path, img) if got is not None else None
        if masks is not None:
            self.stats["mask_hits"] += 1
            return masks
        masks = self._generate(provider, [img])[0]
        self._store_masks(img, key, masks, provider)
        return masks

    def _store_masks(self, img, key: str, masks: LabelMasks, provider) -> None:
        self.stats["computed"] += 1
        self._write(
            self._path("masks", key),
            masks.to_arrays(),
            {
                "key": key,
                "kind": "masks",
                "format": FORMAT,
                "identity": json.loads(self._identity(provider)),
                "shape": list(img.shape),
            },
        )

    def _masks_from(self, arrays: dict, path: Path, img) -> LabelMasks | None:
        try:
            masks = LabelMasks.from_arrays(arrays)
            if masks.shape != img.shape[:2]:
                raise CorruptEntry(f"holds {masks.shape} masks for a {img.shape[:2]} image")
        except (KeyError, SPTError) as exc:
            self.stats["corrupt"] += 1
            warnings.warn(f"prior cache entry {path} is corrupt ({exc}); recomputing it", RuntimeWarning, stacklevel=3)
            return None
        return masks

    def _generate(self, provider, imgs) -> list[LabelMasks]:
        """Run the provider (``generate_batch`` if it has one) and check what it returned."""
        gen = getattr(provider, "generate_batch", None)
        try:
            out = list(gen(imgs)) if gen else [provider.generate(im) for im in imgs]
        except SPTError:
            raise
        except Exception as exc:
            raise ProviderRunError(f"{describe_provider(provider)} failed: {type(exc).__name__}: {exc}") from exc
        if len(out) != len(imgs):
            raise ProviderError(f"{describe_provider(provider)} returned {len(out)} results for {len(imgs)} images")
        checked = []
        for im, masks in zip(imgs, out, strict=True):
            try:
                lm = as_label_masks(masks, shape=im.shape[:2])
            except SPTError as exc:
                raise ProviderError(f"{describe_provider(provider)} returned unusable masks: {exc}") from None
            if lm.shape != im.shape[:2]:
                raise ProviderError(
                    f"{describe_provider(provider)} returned {lm.shape[0]}x{lm.shape[1]} masks for a "
                    f"{im.shape[0]}x{im.shape[1]} image; masks must have the image's size (nothing was cached)"
                )
            checked.append(lm)
        return checked

    def get_or_compute(self, image, provider, encoding: str = DEFAULT_ENCODING) -> np.ndarray:
        """Encoded prior of ``image``: cached prior, else cached masks + encoding, else provider."""
        return self.get_or_compute_many([image], provider, encoding)[0]

    def get_or_compute_many(
        self, images, provider, encoding: str = DEFAULT_ENCODING, status: list | None = None
    ) -> list[np.ndarray]:
        """Like :meth:`get_or_compute` for several images; missing masks are computed with one
        ``provider.generate_batch`` call (SAM then encodes several images per encoder call).
        ``status`` (a list) receives ``"prior"``, ``"masks"`` or ``"computed"`` per image."""
        parse_encoding(encoding)
        imgs = [to_rgb_uint8(im) for im in images]
        out: list = [None] * len(imgs)
        states = [""] * len(imgs)
        mkeys = [self.mask_key(im, provider) for im in imgs]
        todo = []
        for i, (im, mk) in enumerate(zip(imgs, mkeys, strict=True)):
            pk = self._prior_key(mk, encoding)
            prior = self.load_prior(pk)
            if prior is not None and prior.shape[1:] == im.shape[:2]:
                self.stats["prior_hits"] += 1
                out[i], states[i] = prior, "prior"
                continue
            path = self._path("masks", mk)
            got = self._read(path, {"key": mk})
            masks = self._masks_from(got, path, im) if got is not None else None
            if masks is not None:
                self.stats["mask_hits"] += 1
                out[i], states[i] = self._encode_store(masks, im, mk, encoding), "masks"
            else:
                todo.append(i)
        if todo:
            batch = self._generate(provider, [imgs[i] for i in todo])
            for i, masks in zip(todo, batch, strict=True):
                self._store_masks(imgs[i], mkeys[i], masks, provider)
                out[i], states[i] = self._encode_store(masks, imgs[i], mkeys[i], encoding), "computed"
        if status is not None:
            status.extend(states)
        return out

    def _encode_store(self, masks, img, mask_key, encoding) -> np.ndarray:
        prior = encode_masks(masks, kind=encoding, shape=img.shape[:2]).astype(np.float32, copy=False)
        pk = self._prior_key(mask_key, encoding)
        self._write(
            self._path("priors", pk),
            {"prior": prior},
            {"key": pk, "kind": "prior", "mask_key": mask_key, "encoding": encoding},
        )
        return prior


def compute_prior(image, provider, encoding: str = DEFAULT_ENCODING, cache: PriorCache | None = None) -> np.ndarray:
    """The encoded prior ``(C, H, W)`` float32 of ``image``: through ``cache`` when one is given
    (:meth:`PriorCache.get_or_compute`), else computed by ``provider`` and encoded, nothing written."""
    if cache is not None:
        return cache.get_or_compute(image, provider, encoding)
    return encode_masks(provider.generate(image), kind=encoding, shape=image.shape[:2]).astype(np.float32, copy=False)
