"""shmkv as a vLLM v1 KV connector: ``shmkv.vllm.ShmkvConnector`` (docs/vllm.md).

Load it as an external connector::

    --kv-transfer-config '{"kv_connector":"ShmkvConnector","kv_connector_module_path":"shmkv.vllm",
      "kv_role":"kv_both","kv_load_failure_policy":"recompute",
      "kv_connector_extra_config":{"shmkv.socket":"/run/user/1000/shmkv.sock","shmkv.chunk_tokens":256}}'

vLLM makes one instance with role SCHEDULER (in the scheduler process) and one with role WORKER
per worker rank. The scheduler side looks prompts up and decides, every step, what each worker
loads before the forward and stores after it; the worker side moves the bytes between vLLM's
paged KV tensors and pool slots with the strided paged-KV kernels. Everything is synchronous:
loads complete in ``start_load_kv``, stores in ``wait_for_save``.

* Keys: the chained chunk digests of docs/chunk-hashing.md over the request's token ids, rooted
  in (model, world size, dtype, "NHD" or "MLA", salt) plus the request's ``cache_salt`` and LoRA
  name. Chunk objects have the canonical layout of docs/paged-kv.md whatever the engine layout,
  so this connector shares chunks with ``shmkv.KVConnector(layout="NHD")`` of the same namespace.
* Only computed tokens are stored: a chunk is stored in the step whose forward computed its last
  token (chunked prefill stores each chunk once it is complete); partial chunks never. Only
  prompt tokens are stored.
* A chunk the scheduler found but a worker cannot load (evicted meanwhile, or never stored by
  that rank) is reported through ``get_block_ids_with_load_errors``; that worker stores nothing
  for the request in that step, and vLLM recomputes from the first bad block.

Without vLLM installed this module still imports (with a minimal base class written from the
interface description in docs/vllm.md) so that its logic can be tested; vLLM itself always
loads it on top of its real ``KVConnectorBase_V1``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from . import _native
from ._transfer import ChunkTransfer, logical_view

logger = logging.getLogger("shmkv.vllm")

try:  # the real base classes when vLLM is installed
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # type: ignore
        KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole)
    HAVE_VLLM = True
except ImportError:  # pragma: no cover - exercised only where vLLM is absent
    import enum

    HAVE_VLLM = False

    class KVConnectorRole(enum.IntEnum):  # type: ignore[no-redef]
        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata:  # type: ignore[no-redef]
        """Marker base of per-step connector metadata."""

    class KVConnectorBase_V1:  # type: ignore[no-redef]
        """The parts of vLLM's base class this connector relies on (docs/vllm.md)."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            if vllm_config.kv_transfer_config is None:
                raise ValueError("kv_transfer_config must be set to use a KV connector")
            self._vllm_config = vllm_config
            self._kv_transfer_config = vllm_config.kv_transfer_config
            self._kv_cache_config = kv_cache_config
            self._role = role
            self._connector_metadata = None

        @property
        def role(self):
            return self._role

        def bind_connector_metadata(self, connector_metadata):
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self):
            self._connector_metadata = None

        def _get_connector_metadata(self):
            assert self._connector_metadata is not None
            return self._connector_metadata

        def has_connector_metadata(self):
            return self._connector_metadata is not None


# ---- configuration ------------------------------------------------------------------------------

EXTRA_KEYS = {
    "shmkv.socket": "path of the shmkv-server socket (default: $SHMKV_SOCKET, else "
                    "$XDG_RUNTIME_DIR/shmkv.sock)",
    "shmkv.chunk_tokens": "tokens per chunk object, a multiple of vLLM's block size (default 256)",
    "shmkv.model": "model name in the namespace (default: vLLM's model_config.model)",
    "shmkv.salt": "tenant salt in the namespace and the keys (default '')",
    "shmkv.timeout": "seconds to wait for the server per call (default 5.0)",
    "shmkv.threads": "CPU copy threads per transfer, 0 = automatic (default 0)",
    "shmkv.instance_id": "label in the server's logs (default 'vllm-<role>-<rank>')",
    "shmkv.tp_rank": "this worker's TP rank when vLLM's TP group is not initialised (tests only)",
    "shmkv.tp_size": "the TP size when vLLM's TP group is not initialised (tests only)",
}


def _extra(vllm_config) -> dict:
    cfg = vllm_config.kv_transfer_config
    extra = dict(getattr(cfg, "kv_connector_extra_config", None) or {})
    unknown = sorted(k for k in extra if k.startswith("shmkv.") and k not in EXTRA_KEYS)
    if unknown:
        raise ValueError(f"unknown shmkv extra-config keys {unknown}; known: {sorted(EXTRA_KEYS)}")
    return extra


def _default_socket() -> str:
    if os.environ.get("SHMKV_SOCKET"):
        return os.environ["SHMKV_SOCKET"]
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "shmkv.sock")


def _kv_dtype(vllm_config) -> str:
    cache_dtype = str(getattr(vllm_config.cache_config, "cache_dtype", "auto"))
    if cache_dtype != "auto":
        return cache_dtype
    return str(vllm_config.model_config.dtype).removeprefix("torch.")


def _is_mla(vllm_config) -> bool:
    return bool(getattr(vllm_config.model_config, "use_mla", False))


def _parallel(vllm_config, extra) -> tuple[int, int, int, int]:
    """(tp_rank, tp_size, pp_rank, pp_size) of this process."""
    pc = vllm_config.parallel_config
    tp_size = int(extra.get("shmkv.tp_size", getattr(pc, "tensor_parallel_size", 1)))
    pp_size = int(getattr(pc, "pipeline_parallel_size", 1))
    tp_rank = pp_rank = 0
    try:
        from vllm.distributed import parallel_state as ps  # type: ignore

        if ps.model_parallel_is_initialized():
            tp_rank = ps.get_tensor_model_parallel_rank()
            tp_size = ps.get_tensor_model_parallel_world_size()
            pp_rank = ps.get_pp_group().rank_in_group
            pp_size = ps.get_pp_group().world_size
            return tp_rank, tp_size, pp_rank, pp_size
    except ImportError:
        pass
    tp_rank = int(extra.get("shmkv.tp_rank", 0))
    return tp_rank, tp_size, pp_rank, pp_size


@dataclass
class _Settings:
    socket: str
    chunk_tokens: int
    model: str
    salt: str
    timeout: float
    threads: int
    instance_id: str
    dtype: str
    mla: bool
    block_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int

    @property
    def layout(self) -> str:  # the chunk object format (docs/paged-kv.md), not the engine layout
        return "MLA" if self.mla else "NHD"

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def rank(self) -> int:
        # MLA's latent is the same on every TP rank: one copy, in TP rank 0's namespace.
        return self.pp_rank * self.tp_size + (0 if self.mla else self.tp_rank)

    @property
    def stores(self) -> bool:
        return not self.mla or self.tp_rank == 0


def _settings(vllm_config, role) -> _Settings:
    extra = _extra(vllm_config)
    block_size = int(vllm_config.cache_config.block_size)
    chunk_tokens = int(extra.get("shmkv.chunk_tokens", _native.DEFAULT_CHUNK_TOKENS))
    if chunk_tokens <= 0 or chunk_tokens % block_size != 0:
        raise ValueError(f"shmkv.chunk_tokens {chunk_tokens} must be a positive multiple of vLLM's block size "
                         f"{block_size}")
    tp_rank, tp_size, pp_rank, pp_size = _parallel(vllm_config, extra)
    side = "scheduler" if role == KVConnectorRole.SCHEDULER else "worker"
    return _Settings(
        socket=str(extra.get("shmkv.socket", _default_socket())), chunk_tokens=chunk_tokens,
        model=str(extra.get("shmkv.model", vllm_config.model_config.model)), salt=str(extra.get("shmkv.salt", "")),
        timeout=float(extra.get("shmkv.timeout", 5.0)), threads=int(extra.get("shmkv.threads", 0)),
        instance_id=str(extra.get("shmkv.instance_id", f"vllm-{side}-{tp_rank}")), dtype=_kv_dtype(vllm_config),
        mla=_is_mla(vllm_config), block_size=block_size, tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank,
        pp_size=pp_size)


# ---- metadata (scheduler -> workers, every step) -------------------------------------------------

@dataclass
class LoadSpec:
    """Load chunks keys[0..] into blocks ``block_ids`` (chunk i in block_ids[i*bpc:(i+1)*bpc]),
    leaving the first ``skip_tokens`` tokens (held by vLLM already) untouched."""
    req_id: str
    keys: list[bytes]
    block_ids: list[int]
    skip_tokens: int


@dataclass
class StoreSpec:
    """Store chunks keys[i] from blocks block_ids[i*bpc:(i+1)*bpc]."""
    req_id: str
    keys: list[bytes]
    block_ids: list[int]


@dataclass
class ShmkvConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)


@dataclass
class _Request:
    """Scheduler-side state of one request, from its first lookup to request_finished."""
    request: Any
    keys: list[bytes] | None = None  # keys of the full prompt chunks, computed once
    block_ids: list[int] = field(default_factory=list)
    stored_chunks: int = 0  # leading prompt chunks already handed to the workers to store
    pending_load: int = 0  # external tokens granted by update_state_after_alloc, not yet planned


class ShmkvConnector(KVConnectorBase_V1):
    """vLLM v1 KV connector backed by a node-local shmkv-server (docs/vllm.md).

    Thread-safety: vLLM calls each instance from one thread (the scheduler loop, or the worker's
    execute loop); the instance is not meant to be shared.
    """

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._s = _settings(vllm_config, role)
        s = self._s
        self._client = _native.Client(s.socket, timeout=s.timeout, instance_id=s.instance_id, model=s.model,
                                      world_size=s.world_size, rank=s.rank if role == KVConnectorRole.WORKER else
                                      s.pp_rank * s.tp_size, dtype=s.dtype, layout=s.layout, salt=s.salt)
        self._roots: dict[str, bytes] = {}
        # scheduler side
        self._requests: dict[str, _Request] = {}
        # worker side
        self._views: list | None = None
        self._layer_names: list[str] = []
        self._transfer = ChunkTransfer(self._client, chunk_tokens=s.chunk_tokens, threads=s.threads)
        self._load_errors: set[int] = set()
        self.stats = {"lookups": 0, "hit_tokens": 0, "loaded_chunks": 0, "load_failed_chunks": 0,
                      "stored_chunks": 0, "existing_chunks": 0, "skipped_chunks": 0}

    # ---- shared ---------------------------------------------------------------------------------
    @property
    def prefer_cross_layer_blocks(self) -> bool:
        return False

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a request never waits for shmkv

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config) -> bool:
        return False  # no layer-wise hooks: loads before the forward, stores after it

    def _root(self, request) -> bytes:
        # The request's cache_salt and LoRA adapter change the KV of the same tokens: both go into
        # the root, so such requests never share chunks with others.
        parts = [self._s.salt]
        salt = getattr(request, "cache_salt", None)
        lora = getattr(request, "lora_request", None)
        if salt:
            parts.append("cache_salt=" + str(salt))
        if lora is not None:
            parts.append("lora=" + str(getattr(lora, "lora_name", lora)))
        salt_text = "\x1f".join(parts)
        root = self._roots.get(salt_text)
        if root is None:
            s = self._s
            root = _native.chain_root(s.model, s.world_size, s.dtype, s.layout, salt_text)
            self._roots[salt_text] = root
        return root

    @staticmethod
    def _cacheable(request) -> bool:
        # Multimodal placeholders and prompt embeddings make equal token ids mean different KV.
        return not getattr(request, "mm_features", None) and getattr(request, "prompt_embeds", None) is None

    # ---- scheduler side -------------------------------------------------------------------------
    def _prompt_keys(self, st: _Request) -> list[bytes]:
        if st.keys is None:
            st.keys = _native.chunk_digests(self._root(st.request), list(st.request.prompt_token_ids),
                                            self._s.chunk_tokens)
        return st.keys

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        """Tokens after ``num_computed_tokens`` that shmkv holds, in whole chunks, leaving at least
        one token of the request to compute. Looks up without pinning: no state changes here."""
        if not self._cacheable(request):
            return 0, False
        c = self._s.chunk_tokens
        usable = (request.num_tokens - 1) // c  # never the whole request: vLLM computes >= 1 token
        prompt_chunks = len(request.prompt_token_ids) // c
        usable = min(usable, prompt_chunks)
        first = num_computed_tokens // c
        if usable <= first:
            return 0, False
        st = self._requests.get(request.request_id)
        keys = (self._prompt_keys(st) if st is not None and st.request is request else
                _native.chunk_digests(self._root(request), list(request.prompt_token_ids), c))
        self.stats["lookups"] += 1
        hits = self._client.lookup(keys[first:usable])
        hit_tokens = (first + hits) * c
        ext = max(0, hit_tokens - num_computed_tokens)
        self.stats["hit_tokens"] += ext
        return ext, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
        st = self._requests.get(request.request_id)
        if st is None or st.request is not request:
            st = self._requests[request.request_id] = _Request(request)
        st.block_ids = list(blocks.get_block_ids()[0])
        st.pending_load = num_external_tokens

    def build_connector_meta(self, scheduler_output) -> ShmkvConnectorMetadata:
        meta = ShmkvConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            st = self._requests.get(new.req_id)
            if st is None:
                continue  # a request this connector never saw allocated (not cacheable)
            st.block_ids = list(new.block_ids[0])
            self._plan(meta, st, new.req_id, new.num_computed_tokens, scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        resumed_ids = getattr(cached, "resumed_req_ids", None)
        resumed_flags = getattr(cached, "resumed_from_preemption", None)
        for i, req_id in enumerate(cached.req_ids):
            st = self._requests.get(req_id)
            if st is None:
                continue
            resumed = req_id in resumed_ids if resumed_ids is not None else bool(resumed_flags and resumed_flags[i])
            new_blocks = cached.new_block_ids[i]
            if resumed:
                st.block_ids = list(new_blocks[0]) if new_blocks is not None else []
            elif new_blocks is not None:
                st.block_ids.extend(new_blocks[0])
            self._plan(meta, st, req_id, cached.num_computed_tokens[i], scheduled.get(req_id, 0))
        return meta

    def _plan(self, meta, st: _Request, req_id: str, computed: int, num_scheduled: int):
        c = self._s.chunk_tokens
        bpc = c // self._s.block_size
        if st.pending_load:
            # vLLM set num_computed_tokens = local + external: load [computed - external, computed).
            start, end = computed - st.pending_load, computed
            st.pending_load = 0
            first, last = start // c, end // c
            keys = self._prompt_keys(st)[first:last]
            meta.loads.append(LoadSpec(req_id, keys, st.block_ids[first * bpc:last * bpc], start - first * c))
            # The loaded chunks are in shmkv: not offered for storing again (a load error lowers
            # stored_chunks in update_connector_output, so recomputed chunks are stored).
            st.stored_chunks = max(st.stored_chunks, last)
        if not self._cacheable(st.request):
            return
        done = min(computed + num_scheduled, len(st.request.prompt_token_ids)) // c
        if done > st.stored_chunks:
            keys = self._prompt_keys(st)[st.stored_chunks:done]
            meta.stores.append(StoreSpec(req_id, keys, st.block_ids[st.stored_chunks * bpc:done * bpc]))
            st.stored_chunks = done

    def update_connector_output(self, connector_output):
        # Blocks a worker could not load were recomputed with the rest of the step discarded: the
        # chunks planned for storing from them on are planned again once recomputed.
        bad = getattr(connector_output, "invalid_block_ids", None)
        if not bad:
            return
        bpc = self._s.chunk_tokens // self._s.block_size
        for st in self._requests.values():
            for i, b in enumerate(st.block_ids):
                if b in bad:
                    st.stored_chunks = min(st.stored_chunks, i // bpc)
                    break

    def request_finished(self, request, block_ids):
        self._requests.pop(request.request_id, None)
        return False, None  # stores finish within the step: vLLM may free the blocks at once

    def get_finished_count(self):
        return None

    # ---- worker side ----------------------------------------------------------------------------
    def _geometry(self):
        """(block_size, num_kv_heads per rank, head_size) from the KV cache spec or model config."""
        spec = None
        groups = getattr(self._kv_cache_config, "kv_cache_groups", None) if self._kv_cache_config else None
        if groups:
            spec = groups[0].kv_cache_spec
        if spec is not None and hasattr(spec, "num_kv_heads"):
            return int(spec.block_size), int(spec.num_kv_heads), int(spec.head_size)
        mc = self._vllm_config.model_config
        pc = self._vllm_config.parallel_config
        return self._s.block_size, int(mc.get_num_kv_heads(pc)), int(mc.get_head_size())

    def register_kv_caches(self, kv_caches: dict):
        block_size, heads, head_size = self._geometry()
        self._layer_names = list(kv_caches)
        self._views = [logical_view(t, block_size=block_size, num_kv_heads=heads, head_size=head_size,
                                    mla=self._s.mla) for t in kv_caches.values()]
        logger.info("shmkv: %d layers registered, view %s strides %s", len(self._views),
                    list(self._views[0].shape), list(self._views[0].stride()))

    def register_cross_layers_kv_cache(self, kv_cache, attn_backend=None):
        """One tensor (blocks, layers, 2, block_size, heads, head_size) for all layers (MLA:
        (blocks, layers, block_size, head_dim)): one strided view per layer."""
        block_size, heads, head_size = self._geometry()
        layers = kv_cache.shape[1]
        if self._s.mla:
            self._views = [kv_cache[:, l].unsqueeze(0).unsqueeze(3) for l in range(layers)]
        else:
            per = [kv_cache[:, l] for l in range(layers)]  # (B, 2, N, H, D)
            self._views = [logical_view(t, block_size=block_size, num_kv_heads=heads, head_size=head_size)
                           for t in per]
        self._layer_names = [f"layer.{l}" for l in range(layers)]

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._connector_meta_or_none()
        if meta is None or not meta.loads:
            return
        self._failed_now: set[str] = set()
        c = self._s.chunk_tokens
        bpc = c // self._s.block_size
        for spec in meta.loads:
            try:
                loaded = self._transfer.load(spec.keys, self._views, spec.block_ids, spec.skip_tokens)
            except _native.Error as e:  # the server went away: recompute rather than fail the request
                logger.warning("shmkv: load of %s failed: %s", spec.req_id, e)
                loaded = 0
            self.stats["loaded_chunks"] += loaded
            if loaded < len(spec.keys):
                self.stats["load_failed_chunks"] += len(spec.keys) - loaded
                first_bad = max(loaded * bpc, spec.skip_tokens // self._s.block_size)
                self._load_errors.update(spec.block_ids[first_bad:])
                self._failed_now.add(spec.req_id)

    def wait_for_layer_load(self, layer_name: str):
        return  # loads complete in start_load_kv

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs):
        return  # chunks hold every layer: stored in wait_for_save once the forward is done

    def wait_for_save(self):
        meta = self._connector_meta_or_none()
        if meta is None or not meta.stores or not self._s.stores:
            return
        failed = getattr(self, "_failed_now", set())
        for spec in meta.stores:
            if spec.req_id in failed:
                continue  # computed on top of blocks that did not load: never stored
            n = len(spec.keys)
            try:
                out = self._transfer.store(spec.keys, self._views, spec.block_ids, list(range(n)))
            except _native.Error as e:  # a cache: a failed store costs a later recompute, no more
                logger.warning("shmkv: store of %s failed: %s", spec.req_id, e)
                continue
            self.stats["stored_chunks"] += out.stored
            self.stats["existing_chunks"] += out.existing
            self.stats["skipped_chunks"] += out.skipped

    def clear_connector_metadata(self):
        super().clear_connector_metadata()
        self._failed_now = set()

    def get_finished(self, finished_req_ids):
        return None, None  # nothing is asynchronous

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        self._client.close()

    def _connector_meta_or_none(self):
        if not self.has_connector_metadata():
            return None
        meta = self._get_connector_metadata()
        return meta if isinstance(meta, ShmkvConnectorMetadata) else None
