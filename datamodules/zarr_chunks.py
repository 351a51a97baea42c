"""Whole-chunk reads of local zarr arrays straight into a caller's buffer.

zarr 3 reads through an asyncio event loop on a background thread, hops to a thread for every
codec call, decodes each chunk into a fresh array and then copies it into the output. For the
layout the gridded hot path reads most often, that machinery costs about a fifth of a sample's
CPU time on top of decompression itself (measured: 9.0 ms per 8-chunk sample through
``array[t:t + 2]`` against 7.4 ms decoding the same chunk files in place). That layout is: a
local store, chunks holding whole time steps (``(1, *rest)``), C order, native little-endian
float32, no filters, and zstd, blosc or no compression. For it, :class:`ChunkDecoder` reads a
chunk's file and decompresses it into the caller's buffer (through one scratch chunk when that is
a strided view), checking the size the compressed frame declares against the chunk's. :func:`chunk_decoder` returns None for any
other array, which then takes zarr's own path; so does a chunk that is not on disk (zarr's fill
value applies) or whose frame does not declare its size.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_content_size(frame: bytes) -> int | None:
    """The decompressed size a zstd frame header declares (None: not a frame, or no size given).

    Frame header layout (RFC 8878, 3.1.1.1): magic, a descriptor byte (content-size flag in bits
    7-6, single-segment flag in bit 5, dictionary-id flag in bits 1-0), an optional window byte, an
    optional dictionary id, then the content size field of 0, 1, 2, 4 or 8 bytes.
    """
    if len(frame) < 6 or frame[:4] != _ZSTD_MAGIC:
        return None
    descriptor = frame[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(frame) < start + width:
        return None
    size = int.from_bytes(frame[start : start + width], "little")
    return size + 256 if width == 2 else size


def blosc_content_size(frame: bytes) -> int | None:
    """The decompressed size a blosc header declares (bytes 4-8, little-endian)."""
    if len(frame) < 16:
        return None
    return int.from_bytes(frame[4:8], "little")


def _codec(name: str) -> Any:
    import numcodecs

    return numcodecs.Zstd() if name == "zstd" else numcodecs.Blosc()


class ChunkDecoder:
    """Decodes whole chunks of one local zarr array into caller buffers (see the module docstring).

    Built in the process that reads: ``StoreReader`` builds its decoders again in every process
    (a forked or spawned DataLoader worker) and never pickles them, so this holds per-process
    state (codec, per-thread scratch) freely.

    Args:
        directory: The array's folder.
        encode_key: Chunk coordinates -> the chunk's key (file path relative to ``directory``).
        compression: ``"zstd"``, ``"blosc"`` or ``None``.
        chunk_shape: The (regular) chunk shape.
    """

    def __init__(
        self,
        directory: str,
        encode_key: Callable[[tuple[int, ...]], str],
        compression: str | None,
        chunk_shape: tuple[int, ...],
    ) -> None:
        self.directory = directory
        self.encode_key = encode_key
        self.compression = compression
        self.chunk_shape = tuple(chunk_shape)
        self.nbytes = int(np.prod(chunk_shape)) * 4
        self._codec = _codec(compression) if compression else None
        self._declared = {"zstd": zstd_content_size, "blosc": blosc_content_size}.get(compression or "")
        self._local = threading.local()  # per-thread scratch chunk

    def read_into(self, coords: tuple[int, ...], out: np.ndarray, pick: list[int] | None = None) -> bool:
        """Decode chunk ``coords`` into ``out``: float32, the chunk's shape without its time axis.

        A C-contiguous ``out`` receives the decoded bytes directly. Any other view (a flipped
        axis), or ``pick`` (positions along the chunk's second axis, e.g. pressure levels, in the
        order ``out`` holds them), goes through a per-thread scratch chunk and one copy.

        Returns:
            False when the fast path does not apply to this chunk (no file: zarr fills it; a frame
            that does not declare its size); ``out`` is then untouched.

        Raises:
            ValueError: If the chunk's frame declares a size other than the chunk's (a chunk of
                another array or shape).
            RuntimeError: numcodecs' error when decompression fails (a corrupt or truncated chunk).
        """
        path = os.path.join(self.directory, self.encode_key(coords))
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return False
        if self._declared is None:  # uncompressed: the file is the chunk
            if len(data) != self.nbytes:
                raise ValueError(f"chunk {path} holds {len(data)} bytes, not the {self.nbytes} of its shape")
        else:
            declared = self._declared(data)
            if declared is None:
                return False
            if declared != self.nbytes:
                raise ValueError(f"chunk {path} decodes to {declared} bytes, not the {self.nbytes} of its shape")
        direct = pick is None and out.flags.c_contiguous
        target = out if direct else self._scratch()
        if self._codec is None:
            target.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
        else:
            self._codec.decode(data, out=target.reshape(-1))
        if not direct:
            out[...] = target if pick is None else target[pick]
        return True

    def _scratch(self) -> np.ndarray:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = np.empty(self.chunk_shape[1:], np.float32)
        return scratch


def chunk_decoder(array: Any) -> ChunkDecoder | None:
    """A :class:`ChunkDecoder` for a zarr 3 ``Array`` of the supported layout, else None."""
    try:
        from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr 2
        return None
    store = getattr(array, "store", None)
    if not isinstance(store, LocalStore) or sys.byteorder != "little":
        return None
    if array.dtype != np.dtype("<f4") or array.ndim < 2:
        return None
    chunks = tuple(int(c) for c in array.chunks)
    if chunks[0] != 1 or chunks[1:] != tuple(int(s) for s in array.shape[1:]):
        return None
    meta = array.metadata
    compression: str | None
    if meta.zarr_format == 3:
        codecs = list(meta.codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if endian not in (None, "little"):
            return None
        rest = codecs[1:]
        if not rest:
            compression = None
        elif len(rest) == 1 and isinstance(rest[0], ZstdCodec):
            compression = "zstd"
        elif len(rest) == 1 and isinstance(rest[0], BloscCodec):
            compression = "blosc"
        else:
            return None
    elif meta.zarr_format == 2:
        import numcodecs

        if meta.order != "C" or meta.filters:
            return None
        if meta.compressor is None:
            compression = None
        elif isinstance(meta.compressor, numcodecs.Zstd):
            compression = "zstd"
        elif isinstance(meta.compressor, numcodecs.Blosc):
            compression = "blosc"
        else:
            return None
    else:  # pragma: no cover - a future format
        return None
    directory = os.path.join(str(store.root), array.path) if array.path else str(store.root)
    return ChunkDecoder(directory, meta.encode_chunk_key, compression, chunks)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, size, pool)


def decode_pool(size: int) -> ThreadPoolExecutor | None:
    """This process's thread pool for decoding several chunks at once (None for one thread).

    numcodecs releases the GIL while it decompresses, so chunks decode in parallel threads; the
    pool is rebuilt after a fork (a forked pool has no threads) or when ``size`` changes.
    """
    global _POOL
    if size <= 1:
        return None
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != size:
        _POOL = (os.getpid(), size, ThreadPoolExecutor(size, thread_name_prefix="sciadapt-decode"))
    return _POOL[2]


def decode_all(
    decoder: ChunkDecoder,
    jobs: Sequence[tuple[tuple[int, ...], np.ndarray]],
    threads: int,
    pick: list[int] | None = None,
) -> list[bool]:
    """:meth:`ChunkDecoder.read_into` for every ``(coords, out)``, on ``threads`` threads."""
    pool = decode_pool(threads) if len(jobs) > 1 else None
    if pool is None:
        return [decoder.read_into(coords, out, pick) for coords, out in jobs]
    return list(pool.map(lambda job: decoder.read_into(job[0], job[1], pick), jobs))
