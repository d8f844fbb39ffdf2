"""shmkv as an SGLang HiCache storage backend: ``shmkv.sglang.ShmkvStorage`` (docs/sglang.md).

Load it with SGLang's ``dynamic`` backend::

    --enable-hierarchical-cache --hicache-storage-backend dynamic \\
    --hicache-storage-backend-extra-config '{"backend_name":"shmkv","module_path":"shmkv.sglang",
      "class_name":"ShmkvStorage","interface_v1":1,"shmkv.socket":"/run/user/1000/shmkv.sock"}'

SGLang builds one instance per (dp, cp, tp, pp) rank as ``ShmkvStorage(storage_config, kwargs)``
and registers that rank's host KV pool with :meth:`ShmkvStorage.register_mem_pool_host`; its
prefetch and backup threads then call the instance concurrently.

* One object per host page, keyed by SGLang's page hash (64 hex digits, stored as its 32 bytes),
  in a namespace of (model, TP x PP x CP ranks, this rank, dtype, "NHD" or "MLA", salt "sglang",
  page size and the operator's salt). MLA's latent is the same on every TP rank: it lives in TP
  rank 0's namespace, only rank 0 writes it, every rank reads it.
* The object holds the page in shmkv's canonical chunk layout (docs/paged-kv.md:
  ``[2, layers, page_size, heads * head_dim]``, MLA ``[layers, page_size, dim]``), whatever the
  host pool's layout: pages stored from a ``page_first`` pool load into a ``layer_first`` one.
* ``batch_get_v1`` / ``batch_set_v1`` copy between pool slots and host pages directly (the strided
  paged-KV kernels over the host pool's buffer, no staging copy); ``batch_get`` / ``batch_set`` /
  ``get`` / ``set`` do the same over the flat pages of SGLang's generic path.

Without SGLang installed this module still imports (with a minimal base class written from the
interface description in docs/sglang.md) so that it can be unit-tested; SGLang itself always loads
it on top of its real ``HiCacheStorage``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Any, List, Optional

from . import _native
from ._transfer import ChunkTransfer

logger = logging.getLogger("shmkv.sglang")

try:  # the real base class when SGLang is installed
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage  # type: ignore
    HAVE_SGLANG = True
except ImportError:  # pragma: no cover - exercised only where SGLang is absent
    import abc

    HAVE_SGLANG = False

    class HiCacheStorage(abc.ABC):  # type: ignore[no-redef]
        """The parts of SGLang's base class this backend relies on (docs/sglang.md)."""

        def register_mem_pool_host(self, mem_pool_host):
            self.mem_pool_host = mem_pool_host


def _storage_metrics():
    try:
        from sglang.srt.observability.metrics_collector import StorageMetrics  # type: ignore
    except ImportError:  # pragma: no cover
        return None
    return StorageMetrics()


EXTRA_KEYS = {
    "shmkv.socket": "path of the shmkv-server socket (default: $SHMKV_SOCKET, else $XDG_RUNTIME_DIR/shmkv.sock)",
    "shmkv.model": "model name in the namespace (default: the storage config's model_name)",
    "shmkv.salt": "tenant salt in the namespace (default '')",
    "shmkv.timeout": "seconds to wait for the server per call (default 5.0)",
    "shmkv.threads": "CPU copy threads per transfer, 0 = automatic (default 0)",
    "shmkv.instance_id": "label in the server's logs (default 'sglang-tp<rank>')",
}

# Layouts whose host buffer has a per-layer view of every page (docs/sglang.md).
LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")


def _default_socket() -> str:
    if os.environ.get("SHMKV_SOCKET"):
        return os.environ["SHMKV_SOCKET"]
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "shmkv.sock")


def _key_bytes(key: str) -> bytes:
    """SGLang's page hashes are 64 hex digits: their 32 bytes. Anything else: its SHA-256."""
    if len(key) == 64:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    return hashlib.sha256(key.encode()).digest()


class ShmkvStorage(HiCacheStorage):
    """SGLang HiCache L3 storage backed by a node-local shmkv-server (docs/sglang.md).

    Thread-safety: SGLang's prefetch, backup and scheduler threads call one instance at once; every
    method may be called from any thread. The client serialises its calls to the server, copies
    run without the GIL, and the statistics are guarded by a lock.
    """

    def __init__(self, storage_config, kwargs: Optional[dict] = None):
        self.storage_config = storage_config
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        unknown = sorted(k for k in extra if k.startswith("shmkv.") and k not in EXTRA_KEYS)
        if unknown:
            raise ValueError(f"unknown shmkv extra-config keys {unknown}; known: {sorted(EXTRA_KEYS)}")
        if getattr(storage_config, "dcp_size", 1) > 1:
            raise NotImplementedError("shmkv.sglang: decode context parallelism (dcp_size > 1) is not supported")
        if getattr(storage_config, "should_split_heads", False):
            raise NotImplementedError("shmkv.sglang: split-head storage (tp_lcm_size) is not supported; every TP "
                                      "size keeps its own pages")
        self.socket = str(extra.get("shmkv.socket", _default_socket()))
        self.model = str(extra.get("shmkv.model", getattr(storage_config, "model_name", None) or ""))
        self.salt = str(extra.get("shmkv.salt", ""))
        self.timeout = float(extra.get("shmkv.timeout", 5.0))
        self.threads = int(extra.get("shmkv.threads", 0))
        self.mla = bool(storage_config.is_mla_model)
        self.tp_rank, self.tp_size = int(storage_config.tp_rank), int(storage_config.tp_size)
        self.pp_rank, self.pp_size = int(storage_config.pp_rank), int(storage_config.pp_size)
        self.cp_rank = int(getattr(storage_config, "attn_cp_rank", 0))
        self.cp_size = int(getattr(storage_config, "attn_cp_size", 1))
        self.instance_id = str(extra.get("shmkv.instance_id", f"sglang-tp{self.tp_rank}"))
        # MLA: one copy of the (rank-replicated) latent, written by TP rank 0 only.
        self.writer = not self.mla or self.tp_rank == 0
        self.client = None
        self._transfer: Optional[ChunkTransfer] = None
        self._views: Optional[list] = None
        self._lock = threading.Lock()
        self._metrics = {"prefetch_pgs": [], "backup_pgs": [], "prefetch_bandwidth": [], "backup_bandwidth": []}
        self.counters = {"exists_queries": 0, "hit_pages": 0, "loaded_pages": 0, "stored_pages": 0,
                         "existing_pages": 0, "failed_pages": 0}

    # ---- registration ---------------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host):
        """Takes the rank's host KV pool: its geometry names the namespace, and its buffer is where
        ``batch_get_v1`` / ``batch_set_v1`` copy to and from."""
        super().register_mem_pool_host(mem_pool_host)
        pool = mem_pool_host
        self.layout = str(pool.layout)
        if self.layout not in LAYOUTS:
            raise NotImplementedError(f"shmkv.sglang: host pool layout '{self.layout}' is not supported; "
                                      f"use --hicache-mem-layout {', '.join(LAYOUTS[:3])} (or page_head)")
        if getattr(pool, "dcp_size", 1) > 1:
            raise NotImplementedError("shmkv.sglang: decode context parallelism (dcp_size > 1) is not supported")
        pool_mla = hasattr(pool, "kv_cache_dim")
        if pool_mla != self.mla:
            raise ValueError(f"shmkv.sglang: the storage config says is_mla_model={self.mla} but the host pool is "
                             f"{type(pool).__name__}")
        self.page_size = int(pool.page_size)
        self.layer_num = int(pool.layer_num)
        if self.mla:
            self.heads, self.head_dim = 1, int(pool.kv_cache_dim)
        else:
            if int(pool.head_dim) != int(getattr(pool, "v_head_dim", pool.head_dim)):
                raise NotImplementedError(f"shmkv.sglang: K head_dim {pool.head_dim} != V head_dim "
                                          f"{pool.v_head_dim} is not supported")
            self.heads, self.head_dim = int(pool.head_num), int(pool.head_dim)
        self.dtype = str(pool.dtype).removeprefix("torch.")
        self._views = self._pool_views(pool.kv_buffer)
        rank = (self.pp_rank * self.cp_size + self.cp_rank) * self.tp_size + (0 if self.mla else self.tp_rank)
        salt = "\x1f".join(["sglang", f"page_size={self.page_size}", self.salt])
        if self.client is not None:
            self.client.close()
        self.client = _native.Client(self.socket, timeout=self.timeout, instance_id=self.instance_id,
                                     model=self.model, world_size=self.tp_size * self.pp_size * self.cp_size,
                                     rank=rank, dtype=self.dtype, layout="MLA" if self.mla else "NHD", salt=salt)
        self._transfer = ChunkTransfer(self.client, chunk_tokens=self.page_size, threads=self.threads)
        self.page_nbytes = self._transfer.chunk_nbytes(self._views)
        logger.info("shmkv.sglang: %s pool, %d layers, page %d tokens (%d bytes per object), rank %d of %d",
                    self.layout, self.layer_num, self.page_size, self.page_nbytes, rank,
                    self.tp_size * self.pp_size * self.cp_size)

    def _pool_views(self, buf):
        """Per layer, the logical view [kv, pages, page_size, heads, head_dim] of the host buffer."""
        P, L = self.page_size, self.layer_num
        if self.mla:
            if self.layout == "layer_first":  # (L, size, 1, dim)
                return [buf[l].unflatten(0, (-1, P)).unsqueeze(0) for l in range(L)]
            if self.layout == "page_first":  # (size, L, 1, dim)
                return [buf[:, l].unflatten(0, (-1, P)).unsqueeze(0) for l in range(L)]
            if self.layout == "page_first_direct":  # (pages, L, P, 1, dim)
                return [buf[:, l].unsqueeze(0) for l in range(L)]
            raise NotImplementedError(f"shmkv.sglang: MLA host pool layout '{self.layout}' is not supported")
        if self.layout == "layer_first":  # (2, L, size, H, D)
            return [buf[:, l].unflatten(1, (-1, P)) for l in range(L)]
        if self.layout == "page_first":  # (2, size, L, H, D)
            return [buf[:, :, l].unflatten(1, (-1, P)) for l in range(L)]
        if self.layout == "page_first_direct":  # (2, pages, L, P, H, D)
            return [buf[:, :, l] for l in range(L)]
        # page_head: (2, pages, H, P, L, D)
        return [buf[:, :, :, :, l].permute(0, 1, 3, 2, 4) for l in range(L)]

    def _flat_page_views(self, flat):
        """Per layer, the logical view [kv, 1, page_size, heads, head_dim] of one flat page of the
        generic path (``get_data_page(flat=True)`` / ``get_dummy_flat_data_page()``), whose element
        order is the host layout's."""
        P, L, H, D = self.page_size, self.layer_num, self.heads, self.head_dim
        if flat.numel() != (1 if self.mla else 2) * L * P * H * D:
            raise ValueError(f"shmkv.sglang: a flat page of {flat.numel()} elements; this pool's pages have "
                             f"{(1 if self.mla else 2) * L * P * H * D}")
        if self.mla:
            if self.layout in ("layer_first", "page_first_direct"):  # (L, P, 1, dim)
                page = flat.view(L, P, 1, D)
                return [page[l].unsqueeze(0).unsqueeze(0) for l in range(L)]
            page = flat.view(P, L, 1, D)  # page_first
            return [page[:, l].unsqueeze(0).unsqueeze(0) for l in range(L)]
        if self.layout in ("layer_first", "page_first_direct"):  # (2, L, P, H, D)
            page = flat.view(2, L, P, H, D)
            return [page[:, l].unsqueeze(1) for l in range(L)]
        if self.layout == "page_first":  # (2, P, L, H, D)
            page = flat.view(2, P, L, H, D)
            return [page[:, :, l].unsqueeze(1) for l in range(L)]
        page = flat.view(2, H, P, L, D)  # page_head
        return [page[:, :, :, l].permute(0, 2, 1, 3).unsqueeze(1) for l in range(L)]

    def _ready(self) -> ChunkTransfer:
        if self._transfer is None:
            raise RuntimeError("shmkv.sglang: register_mem_pool_host has not been called")
        return self._transfer

    def _pages(self, keys, host_indices) -> list[int]:
        """The host page index of each key's tokens; host_indices must be whole pages, in order."""
        P = self.page_size
        n = len(keys)
        if len(host_indices) != n * P:
            raise ValueError(f"shmkv.sglang: {len(host_indices)} host indices for {n} keys of {P}-token pages; "
                             f"expected {n * P}")
        if n == 0:
            return []
        pages = host_indices.reshape(n, P).to("cpu")
        starts = pages[:, 0]
        if bool((starts % P != 0).any()) or not bool((pages[:, 1:] - pages[:, :-1] == 1).all()):
            raise ValueError("shmkv.sglang: host_indices are not whole pages (each run of page_size indices must "
                             "start at a multiple of page_size and be consecutive)")
        return (starts // P).tolist()

    def _record(self, kind: str, pages: int, seconds: float):
        gb = pages * self.page_nbytes / 1e9
        with self._lock:
            self._metrics[f"{kind}_pgs"].append(pages)
            self._metrics[f"{kind}_bandwidth"].append(gb / seconds if seconds > 0 else 0.0)

    def _count(self, **inc):
        with self._lock:
            for k, v in inc.items():
                self.counters[k] += v

    # ---- existence ------------------------------------------------------------------------------
    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """Number of leading keys stored (committed in the pool or on its disk tier)."""
        t = self._ready()
        if not keys:
            return 0
        hits = t.client.lookup([_key_bytes(k) for k in keys])
        self._count(exists_queries=1, hit_pages=hits)
        return hits

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # ---- zero-copy path -------------------------------------------------------------------------
    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Loads the leading stored pages into their host pages; True for each page loaded."""
        t = self._ready()
        pages = self._pages(keys, host_indices)
        if not keys:
            return []
        start = time.perf_counter()
        try:
            loaded = t.load([_key_bytes(k) for k in keys], self._views, pages)
        except _native.Error as e:  # the server went away: a miss, SGLang computes the tokens
            logger.warning("shmkv.sglang: batch_get_v1 of %d pages failed: %s", len(keys), e)
            loaded = 0
        self._record("prefetch", loaded, time.perf_counter() - start)
        self._count(loaded_pages=loaded, failed_pages=len(keys) - loaded)
        return [True] * loaded + [False] * (len(keys) - loaded)

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Stores the host pages under their keys; True for each page stored now or already
        present. A full pool stores a leading run and reports False for the rest."""
        t = self._ready()
        pages = self._pages(keys, host_indices)
        if not keys:
            return []
        if not self.writer:
            return [True] * len(keys)  # MLA: TP rank 0 writes the one copy every rank reads
        start = time.perf_counter()
        try:
            out = t.store([_key_bytes(k) for k in keys], self._views, pages, list(range(len(keys))))
        except _native.Error as e:
            logger.warning("shmkv.sglang: batch_set_v1 of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        self._record("backup", out.stored, time.perf_counter() - start)
        self._count(stored_pages=out.stored, existing_pages=out.existing)
        return list(out.ok)

    # ---- generic path (flat pages) --------------------------------------------------------------
    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Any]:
        """Loads the leading stored pages into the flat pages ``target_locations`` (fresh dummy
        pages when None); the page tensor per key, None from the first miss on."""
        t = self._ready()
        if not keys:
            return []
        if target_locations is None:
            target_locations = [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
        if len(target_locations) != len(keys):
            raise ValueError(f"shmkv.sglang: {len(target_locations)} target locations for {len(keys)} keys")
        targets = list(target_locations)

        def copy(chunks):
            for chunk, target in zip(chunks, targets):
                _native.scatter_strided([chunk], self._flat_page_views(target), [0], 0,
                                        chunk_tokens=self.page_size, threads=1)

        start = time.perf_counter()
        try:
            loaded = t.load_with([_key_bytes(k) for k in keys], copy)
        except _native.Error as e:
            logger.warning("shmkv.sglang: batch_get of %d pages failed: %s", len(keys), e)
            loaded = 0
        self._record("prefetch", loaded, time.perf_counter() - start)
        self._count(loaded_pages=loaded, failed_pages=len(keys) - loaded)
        return targets[:loaded] + [None] * (len(keys) - loaded)

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        return self.batch_get([key], None if target_location is None else [target_location])[0]

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        """Stores the flat pages ``values`` under ``keys``; True when every page is stored or was
        present."""
        t = self._ready()
        if not keys:
            return True
        if values is None or len(values) != len(keys):
            raise ValueError(f"shmkv.sglang: batch_set needs one flat page per key ({len(keys)} keys)")
        if not self.writer:
            return True
        pages = list(values)

        def copy(picked, buffers):
            for i, buf in zip(picked, buffers):
                _native.gather_strided(self._flat_page_views(pages[i]), [0], [0], [buf], chunk_tokens=self.page_size,
                                       threads=1)

        start = time.perf_counter()
        try:
            out = t.store_with([_key_bytes(k) for k in keys], self.page_nbytes, copy)
        except _native.Error as e:
            logger.warning("shmkv.sglang: batch_set of %d pages failed: %s", len(keys), e)
            return False
        self._record("backup", out.stored, time.perf_counter() - start)
        self._count(stored_pages=out.stored, existing_pages=out.existing)
        return all(out.ok)

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    # ---- housekeeping ---------------------------------------------------------------------------
    def clear(self) -> None:
        """Removes every committed, unpinned page of this rank's namespace (other ranks, models
        and engines keep theirs)."""
        removed = self._ready().client.clear()
        logger.info("shmkv.sglang: clear removed %d pages", removed)

    def get_stats(self):
        """SGLang's StorageMetrics (pages and GB/s per batch since the last call), as its storage
        metrics collector expects; the lists restart after each call."""
        m = _storage_metrics()
        with self._lock:
            taken = {k: list(v) for k, v in self._metrics.items()}
            for v in self._metrics.values():
                v.clear()
        if m is None:
            return taken
        m.prefetch_pgs.extend(taken["prefetch_pgs"])
        m.backup_pgs.extend(taken["backup_pgs"])
        m.prefetch_bandwidth.extend(taken["prefetch_bandwidth"])
        m.backup_bandwidth.extend(taken["backup_bandwidth"])
        return m

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
