// Python bindings over the C++ client. Slots are exposed zero-copy: each is a memoryview over
// the mapped pool, kept alive by the buffer object it views (which holds the mapping), so numpy
// and torch.frombuffer views stay valid even after the client reconnects or closes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "shmkv/chunk_hash.h"
#include "shmkv/client.h"
#include "shmkv/paged_kv.h"

namespace py = pybind11;

namespace shmkv {
namespace {

// Exports one slot through the buffer protocol.
struct SlotBuffer {
  std::shared_ptr<const SharedSegment> mapping;
  std::byte* data;
  size_t size;
  bool readonly;
};

py::object g_error, g_timeout_error, g_expired_error;

// The C++ client's default deadline (ClientOptions), in the seconds Python callers use.
const double kDefaultTimeoutSeconds = static_cast<double>(ClientOptions{}.timeout.count()) / 1000.0;

// kExpired becomes shmkv.ExpiredError whose `indices` are the expired keys' positions in the
// failed commit's `keys` (Client::last_expired()).
[[noreturn]] void Raise(const Status& s, const std::vector<uint32_t>& expired = {}) {
  if (s.code() == StatusCode::kExpired) {
    py::object exc = g_expired_error(s.ToString());
    exc.attr("indices") = py::cast(expired);
    PyErr_SetObject(g_expired_error.ptr(), exc.ptr());
    throw py::error_already_set();
  }
  py::object type = s.code() == StatusCode::kTimeout ? g_timeout_error : g_error;
  PyErr_SetString(type.ptr(), s.ToString().c_str());
  throw py::error_already_set();
}

// The error a call's outcome carries, if any.
inline Status FailureOf(const Status& s) {
  return s;
}
template <typename T>
Status FailureOf(const Result<T>& r) {
  return r.status();
}
template <typename T>
Status FailureOf(const T&) {
  return Status::Ok();
}

template <typename T>
T Check(Result<T> r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}
void Check(const Status& s) {
  if (!s.ok()) Raise(s);
}

// Keys arrive as a list of bytes; the views point into the Python objects, which the list holds.
std::vector<std::string_view> Keys(const std::vector<py::bytes>& keys) {
  std::vector<std::string_view> out;
  out.reserve(keys.size());
  for (const py::bytes& k : keys) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    PyBytes_AsStringAndSize(k.ptr(), &p, &n);
    out.emplace_back(p, static_cast<size_t>(n));
  }
  return out;
}

// Thread-safety: every method may be called from any thread, concurrently with any other and
// with close(). Calls on one client are serialised by mu_ (the C++ Client is not thread-safe),
// which is taken with the GIL released, so other Python threads run while one waits on the
// server. close() takes the same lock: it waits for the call in progress, and every call after
// it raises shmkv.Error("client is closed"). Slot memoryviews hold the mapping, not the client:
// they stay valid after close().
class PyClient {
  [[noreturn]] static void RaiseClosed() {
    PyErr_SetString(g_error.ptr(), "client is closed");
    throw py::error_already_set();
  }
  // Runs f on the client under mu_, without the GIL; raises when the client is closed, and
  // raises ExpiredError (with the indices, read under the same lock) when the call expired.
  template <typename F>
  auto Locked(F&& f) {
    std::optional<decltype(f(std::declval<Client&>()))> out;
    std::vector<uint32_t> expired;
    {
      py::gil_scoped_release nogil;
      std::lock_guard lock(mu_);
      if (client_) {
        out.emplace(f(*client_));
        expired = client_->last_expired();
      }
    }
    if (!out) RaiseClosed();
    if (Status s = FailureOf(*out); s.code() == StatusCode::kExpired) Raise(s, expired);
    return std::move(*out);
  }

 public:
  PyClient(const std::string& socket_path, double timeout, const std::string& instance_id, const std::string& model,
           uint32_t world_size, uint32_t rank, const std::string& dtype, const std::string& layout,
           const std::string& salt) {
    if (timeout <= 0) throw py::value_error("timeout must be positive");
    ClientOptions o;
    o.socket_path = socket_path;
    o.instance_id = instance_id;
    o.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
    o.ns = {model, world_size, rank, dtype, layout, salt};
    Result<Client> c = Status::Internal("unset");
    {
      py::gil_scoped_release nogil;
      c = Client::Connect(o);
    }
    client_ = std::make_unique<Client>(Check(std::move(c)));
  }

  py::dict Info() {
    // A copy: another thread's call may reconnect and replace the client's info meanwhile.
    const auto [i, pinned] =
        Locked([](Client& c) { return std::pair(c.info(), c.mapping() && c.mapping()->pinned()); });
    py::dict d;
    d["session"] = i.session;
    d["shm_name"] = i.shm_name;
    d["shm_path"] = i.shm_path;
    d["pool_size"] = i.pool_size;
    d["alignment"] = i.alignment;
    d["server_version"] = i.server_version;
    d["protocol"] = i.protocol;
    d["generation"] = i.generation;
    d["pinned"] = pinned;
    return d;
  }

  py::list PrepareStore(const std::vector<py::bytes>& keys, const std::vector<uint64_t>& sizes) {
    auto k = Keys(keys);
    return Views(Locked([&](Client& c) { return c.PrepareStore(k, sizes); }), /*readonly=*/false);
  }
  void CommitStore(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    Check(Locked([&](Client& c) { return c.CommitStore(k); }));
  }
  uint64_t AbortStore(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    return Check(Locked([&](Client& c) { return c.AbortStore(k); }));
  }
  uint64_t Lookup(const std::vector<py::bytes>& keys, bool pin) {
    auto k = Keys(keys);
    return Check(Locked([&](Client& c) { return c.Lookup(k, pin); }));
  }
  py::list PrepareRetrieve(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    return Views(Locked([&](Client& c) { return c.PrepareRetrieve(k); }), /*readonly=*/true);
  }
  void CommitRetrieve(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    Check(Locked([&](Client& c) { return c.CommitRetrieve(k); }));
  }
  void PostCommitStore(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    Check(Locked([&](Client& c) { return c.PostCommitStore(k); }));
  }
  void PostCommitRetrieve(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    Check(Locked([&](Client& c) { return c.PostCommitRetrieve(k); }));
  }
  void Sync() {
    Check(Locked([&](Client& c) { return c.Sync(); }));
  }
  std::vector<std::string> Remove(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    std::vector<std::string> out;
    for (RemoveOutcome o : Check(Locked([&](Client& c) { return c.Remove(k); }))) {
      out.emplace_back(RemoveOutcomeName(o));
    }
    return out;
  }
  uint64_t Clear() {
    return Check(Locked([&](Client& c) { return c.Clear(); }));
  }
  std::map<std::string, uint64_t> Stats() {
    return Check(Locked([&](Client& c) { return c.Stats(); }));
  }

  // Returns True when stored, False when the key already exists; raises on busy/full.
  bool Put(const py::bytes& key, const py::buffer& data) {
    py::buffer_info info = data.request();
    if (!PyBuffer_IsContiguous(info.view(), 'C')) throw py::value_error("put: data must be C-contiguous");
    const std::string_view k = Keys({key})[0];
    auto bytes = std::span(static_cast<const std::byte*>(info.ptr), static_cast<size_t>(info.size * info.itemsize));
    Status s = Locked([&](Client& c) { return c.Put(k, bytes); });
    if (s.code() == StatusCode::kAlreadyExists) return false;
    Check(s);
    return true;
  }
  // Returns the bytes, or None when the key is missing.
  py::object GetBytes(const py::bytes& key) {
    const std::string_view k = Keys({key})[0];
    auto r = Locked([&](Client& c) { return c.Get(k); });
    if (!r.ok() && r.status().code() == StatusCode::kNotFound) return py::none();
    std::vector<std::byte> v = Check(std::move(r));
    return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
  }

  void Close() {
    py::gil_scoped_release nogil;  // waits for a call in progress, and the destructor may
    std::lock_guard lock(mu_);     // wait for posted replies: neither may hold the GIL
    client_.reset();
  }
  // The statuses of this thread's most recent prepare_* call: another thread's call, on the same
  // client, does not overwrite them.
  std::vector<std::string> last_statuses() const {
    auto it = last_statuses_.find(std::this_thread::get_id());
    return it == last_statuses_.end() ? std::vector<std::string>() : it->second;
  }

 private:
  py::list Views(Result<SlotBatch> r, bool readonly) {
    SlotBatch batch = Check(std::move(r));
    py::list out;
    std::vector<std::string>& statuses = last_statuses_[std::this_thread::get_id()];
    statuses.clear();
    for (const Slot& s : batch.slots) {
      statuses.emplace_back(SlotStatusName(s.status));
      if (s.status != SlotStatus::kOk) {
        out.append(py::none());
        continue;
      }
      py::object holder = py::cast(SlotBuffer{batch.mapping, s.bytes.data(), s.bytes.size(), readonly});
      out.append(py::memoryview(holder));
    }
    return out;
  }

  std::mutex mu_;
  std::unique_ptr<Client> client_;  // guarded by mu_; null once closed
  // Per calling thread (a handful: the threads that share this client); guarded by the GIL.
  std::unordered_map<std::thread::id, std::vector<std::string>> last_statuses_;
};

// ---- chunk digests ---------------------------------------------------------------------------

// Token ids as uint32: a list of ints or any integer array; anything outside [0, 2^32) is an error.
std::vector<uint32_t> TokenIds(const py::handle& tokens) {
  auto arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(tokens);
  if (!arr) throw py::type_error("token_ids must be a sequence of ints or an integer array");
  if (arr.ndim() != 1)
    throw py::value_error("token_ids must be one-dimensional, got " + std::to_string(arr.ndim()) + " dimensions");
  std::vector<uint32_t> out(static_cast<size_t>(arr.size()));
  const int64_t* p = arr.data();
  for (size_t i = 0; i < out.size(); ++i) {
    if (p[i] < 0 || p[i] > 0xFFFFFFFFll) {
      throw py::value_error("token_ids[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                            " is not a token id (must be in [0, 2**32))");
    }
    out[i] = static_cast<uint32_t>(p[i]);
  }
  return out;
}

ChunkDigest RootFromBytes(const py::bytes& root) {
  std::string_view r = Keys({root})[0];
  ChunkDigest d{};
  if (r.size() != d.size())
    throw py::value_error("root must be 32 bytes (a chain_root), got " + std::to_string(r.size()));
  std::memcpy(d.data(), r.data(), d.size());
  return d;
}

py::bytes DigestBytes(const ChunkDigest& d) {
  return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
}

// ---- paged-KV transfer -----------------------------------------------------------------------

// What the kernels need of one array: numpy arrays and memoryviews come through the buffer
// protocol; torch tensors (CPU or CUDA, bfloat16 included, which has no buffer format) through
// data_ptr/shape/dtype. Either way no byte is copied.
struct ArrayRef {
  std::byte* data = nullptr;
  std::vector<int64_t> shape;
  size_t itemsize = 0;
  size_t nbytes = 0;
  std::string dtype;
  bool cuda = false;
  std::optional<py::buffer_info> view;  // keeps a buffer export alive
};

std::string FormatDtype(std::string format, size_t itemsize) {
  if (!format.empty() && (format[0] == '<' || format[0] == '=' || format[0] == '@')) format.erase(0, 1);
  if (format == "e") return "float16";
  if (format == "f") return "float32";
  if (format == "d") return "float64";
  if (format == "B" || format == "c") return "uint8";
  if (format == "b") return "int8";
  if (format == "H") return "uint16";
  if (format == "h") return "int16";
  return "format '" + format + "' (" + std::to_string(itemsize) + " bytes)";
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

ArrayRef GetArray(const py::handle& obj, bool writable, const std::string& what) {
  ArrayRef a;
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size")) {  // a torch.Tensor
    if (!obj.attr("is_contiguous")().cast<bool>()) throw py::value_error(what + " is not contiguous");
    std::string device = py::str(obj.attr("device").attr("type"));
    if (device != "cpu" && device != "cuda")
      throw py::value_error(what + " is on device '" + device + "'; shmkv handles cpu and cuda");
    a.cuda = device == "cuda";
    a.dtype = py::str(obj.attr("dtype"));
    if (a.dtype.rfind("torch.", 0) == 0) a.dtype.erase(0, 6);
    for (const py::handle& d : obj.attr("shape")) a.shape.push_back(d.cast<int64_t>());
    a.itemsize = obj.attr("element_size")().cast<size_t>();
    a.nbytes = obj.attr("numel")().cast<size_t>() * a.itemsize;
    a.data = reinterpret_cast<std::byte*>(obj.attr("data_ptr")().cast<uintptr_t>());
    return a;
  }
  if (!PyObject_CheckBuffer(obj.ptr()))
    throw py::type_error(what + " is neither a buffer (numpy array, memoryview) nor a torch tensor");
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (py::error_already_set&) {
    throw py::value_error(what + (writable ? " is read-only; it must be writable" : " cannot be read as a buffer"));
  } catch (std::exception&) {
    throw py::value_error(what + (writable ? " is read-only; it must be writable" : " cannot be read as a buffer"));
  }
  if (!PyBuffer_IsContiguous(info.view(), 'C')) throw py::value_error(what + " is not C-contiguous");
  a.data = static_cast<std::byte*>(info.ptr);
  a.shape.assign(info.shape.begin(), info.shape.end());
  a.itemsize = static_cast<size_t>(info.itemsize);
  a.nbytes = static_cast<size_t>(info.size) * a.itemsize;
  a.dtype = FormatDtype(info.format, a.itemsize);
  a.view.emplace(std::move(info));
  return a;
}

// The engine cache: every layer the same shape and dtype; the geometry read off the shape.
struct KvCacheRef {
  std::vector<ArrayRef> layers;
  PagedKvCache cache;
  bool cuda = false;
};

KvCacheRef GetKvCache(const py::sequence& kv_caches, const std::string& layout_name, uint32_t chunk_tokens,
                      const std::string& expect_dtype, bool writable) {
  KvCacheRef r;
  Result<KvLayout> layout = ParseKvLayout(layout_name);
  if (!layout.ok()) throw py::value_error(layout.status().message());
  if (kv_caches.size() == 0) throw py::value_error("kv_caches is empty: one tensor per layer is needed");
  for (size_t i = 0; i < kv_caches.size(); ++i) {
    r.layers.push_back(GetArray(kv_caches[i], writable, "kv_caches[" + std::to_string(i) + "]"));
  }
  const ArrayRef& first = r.layers[0];
  const size_t want_rank = *layout == KvLayout::kMLA ? 3 : 5;
  if (first.shape.size() != want_rank) {
    throw py::value_error("kv_caches[0] has shape " + ShapeText(first.shape) + "; layout " + layout_name + " needs " +
                          (want_rank == 3              ? "[num_blocks, block_size, head_dim]"
                           : *layout == KvLayout::kNHD ? "[2, num_blocks, block_size, num_kv_heads, head_size]"
                                                       : "[2, num_blocks, num_kv_heads, block_size, head_size]"));
  }
  if (want_rank == 5 && first.shape[0] != 2) {
    throw py::value_error("kv_caches[0] has shape " + ShapeText(first.shape) +
                          "; its first dimension must be 2 (K and V)");
  }
  if (!expect_dtype.empty() && first.dtype != expect_dtype) {
    throw py::value_error("kv_caches dtype " + first.dtype + " does not match the expected dtype " + expect_dtype);
  }
  for (size_t i = 1; i < r.layers.size(); ++i) {
    const ArrayRef& l = r.layers[i];
    std::string what = "kv_caches[" + std::to_string(i) + "]";
    if (l.shape != first.shape)
      throw py::value_error(what + " has shape " + ShapeText(l.shape) + " but kv_caches[0] has " +
                            ShapeText(first.shape));
    if (l.dtype != first.dtype)
      throw py::value_error(what + " has dtype " + l.dtype + " but kv_caches[0] has " + first.dtype);
    if (l.cuda != first.cuda) throw py::value_error(what + " is on another device than kv_caches[0]");
  }
  KvGeometry& g = r.cache.geometry;
  g.layout = *layout;
  g.num_layers = static_cast<uint32_t>(r.layers.size());
  g.element_size = static_cast<uint32_t>(first.itemsize);
  g.chunk_tokens = chunk_tokens;
  const auto& s = first.shape;
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  if (*layout == KvLayout::kMLA) {
    g.num_blocks = static_cast<uint64_t>(s[0]), g.block_size = u32(s[1]), g.num_kv_heads = 1, g.head_size = u32(s[2]);
  } else if (*layout == KvLayout::kNHD) {
    g.num_blocks = static_cast<uint64_t>(s[1]), g.block_size = u32(s[2]), g.num_kv_heads = u32(s[3]),
    g.head_size = u32(s[4]);
  } else {
    g.num_blocks = static_cast<uint64_t>(s[1]), g.num_kv_heads = u32(s[2]), g.block_size = u32(s[3]),
    g.head_size = u32(s[4]);
  }
  Status v = g.Validate();
  if (!v.ok()) throw py::value_error(v.message());
  for (ArrayRef& l : r.layers) r.cache.layers.push_back(l.data);
  r.cuda = first.cuda;
  return r;
}

std::vector<int64_t> IntList(const py::handle& seq, const std::string& what) {
  auto arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(seq);
  if (!arr || arr.ndim() != 1) throw py::value_error(what + " must be a one-dimensional sequence of ints");
  return std::vector<int64_t>(arr.data(), arr.data() + arr.size());
}

// Chunk buffers: slot memoryviews, numpy arrays or CPU tensors, each exactly chunk_bytes long.
std::vector<ArrayRef> GetChunks(const py::sequence& bufs, bool writable, const char* name) {
  std::vector<ArrayRef> out;
  for (size_t i = 0; i < bufs.size(); ++i) {
    std::string what = std::string(name) + "[" + std::to_string(i) + "]";
    if (bufs[i].is_none()) throw py::value_error(what + " is None (a key without a slot has no chunk to copy)");
    out.push_back(GetArray(bufs[i], writable, what));
    if (out.back().cuda) throw py::value_error(what + " is a CUDA tensor; chunk buffers are host memory (pool slots)");
  }
  return out;
}

void Gather(const py::sequence& kv_caches, const py::handle& block_ids, const py::handle& chunk_indices,
            const py::sequence& out, const std::string& layout, uint32_t chunk_tokens, const std::string& dtype,
            unsigned threads, uintptr_t stream) {
  KvCacheRef kv = GetKvCache(kv_caches, layout, chunk_tokens, dtype, /*writable=*/false);
  std::vector<int64_t> blocks = IntList(block_ids, "block_ids");
  std::vector<int64_t> idx64 = IntList(chunk_indices, "chunk_indices");
  std::vector<uint32_t> idx;
  for (size_t i = 0; i < idx64.size(); ++i) {
    if (idx64[i] < 0 || idx64[i] > 0xFFFFFFFFll) {
      throw py::value_error("chunk_indices[" + std::to_string(i) + "] = " + std::to_string(idx64[i]) +
                            " is negative or too large");
    }
    idx.push_back(static_cast<uint32_t>(idx64[i]));
  }
  std::vector<ArrayRef> chunks = GetChunks(out, /*writable=*/true, "out");
  std::vector<std::span<std::byte>> spans;
  for (const ArrayRef& c : chunks) spans.emplace_back(c.data, c.nbytes);
  Status s;
  {
    py::gil_scoped_release nogil;
    s = kv.cuda ? GatherChunksCuda(kv.cache, blocks, idx, spans, reinterpret_cast<void*>(stream))
                : GatherChunks(kv.cache, blocks, idx, spans, TransferOptions{threads});
  }
  if (s.code() == StatusCode::kInvalidArgument) throw py::value_error(s.message());
  Check(s);
}

void Scatter(const py::sequence& in, const py::sequence& kv_caches, const py::handle& block_ids,
             uint64_t skip_first_n_tokens, const std::string& layout, uint32_t chunk_tokens, const std::string& dtype,
             unsigned threads, uintptr_t stream) {
  KvCacheRef kv = GetKvCache(kv_caches, layout, chunk_tokens, dtype, /*writable=*/true);
  std::vector<int64_t> blocks = IntList(block_ids, "block_ids");
  std::vector<ArrayRef> chunks = GetChunks(in, /*writable=*/false, "chunks");
  std::vector<std::span<const std::byte>> spans;
  for (const ArrayRef& c : chunks) spans.emplace_back(c.data, c.nbytes);
  Status s;
  {
    py::gil_scoped_release nogil;
    s = kv.cuda ? ScatterChunksCuda(spans, kv.cache, blocks, skip_first_n_tokens, reinterpret_cast<void*>(stream))
                : ScatterChunks(spans, kv.cache, blocks, skip_first_n_tokens, TransferOptions{threads});
  }
  if (s.code() == StatusCode::kInvalidArgument) throw py::value_error(s.message());
  Check(s);
}

uint64_t ChunkNbytes(const py::sequence& kv_caches, const std::string& layout, uint32_t chunk_tokens) {
  return GetKvCache(kv_caches, layout, chunk_tokens, "", /*writable=*/false).cache.geometry.chunk_bytes();
}

// ---- strided paged-KV transfer ----------------------------------------------------------------

// One layer of a strided cache: the logical view [kv, blocks, tokens, heads, head_size] (kv = 2
// for K and V, 1 for an MLA latent), with byte strides and the memory the view lies in.
struct StridedRef {
  std::byte* data = nullptr;
  std::vector<int64_t> shape, strides;  // strides in bytes
  size_t itemsize = 0;
  std::string dtype;
  bool cuda = false;
  const std::byte* extent = nullptr;
  size_t extent_bytes = 0;
  std::optional<py::buffer_info> view;
};

StridedRef GetStrided(const py::handle& obj, bool writable, const std::string& what) {
  StridedRef a;
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size")) {  // a torch.Tensor
    std::string device = py::str(obj.attr("device").attr("type"));
    if (device != "cpu" && device != "cuda")
      throw py::value_error(what + " is on device '" + device + "'; shmkv handles cpu and cuda");
    a.cuda = device == "cuda";
    a.dtype = py::str(obj.attr("dtype"));
    if (a.dtype.rfind("torch.", 0) == 0) a.dtype.erase(0, 6);
    a.itemsize = obj.attr("element_size")().cast<size_t>();
    for (const py::handle& d : obj.attr("shape")) a.shape.push_back(d.cast<int64_t>());
    for (const py::handle& d : obj.attr("stride")())
      a.strides.push_back(d.cast<int64_t>() * static_cast<int64_t>(a.itemsize));
    a.data = reinterpret_cast<std::byte*>(obj.attr("data_ptr")().cast<uintptr_t>());
    // The storage the view lies in: untyped_storage() since torch 2.0, storage() before.
    py::object storage = py::hasattr(obj, "untyped_storage") ? obj.attr("untyped_storage")() : obj.attr("storage")();
    a.extent = reinterpret_cast<const std::byte*>(storage.attr("data_ptr")().cast<uintptr_t>());
    a.extent_bytes = storage.attr("nbytes")().cast<size_t>();
    return a;
  }
  if (!PyObject_CheckBuffer(obj.ptr()))
    throw py::type_error(what + " is neither a buffer (numpy array) nor a torch tensor");
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (std::exception&) {
    throw py::value_error(what + (writable ? " is read-only; it must be writable" : " cannot be read as a buffer"));
  }
  a.data = static_cast<std::byte*>(info.ptr);
  a.shape.assign(info.shape.begin(), info.shape.end());
  a.strides.assign(info.strides.begin(), info.strides.end());
  a.itemsize = static_cast<size_t>(info.itemsize);
  a.dtype = FormatDtype(info.format, a.itemsize);
  // A buffer export guarantees every element of the view is addressable: its extent is the
  // range the view itself spans.
  int64_t lo = 0, hi = static_cast<int64_t>(a.itemsize);
  for (size_t i = 0; i < a.shape.size(); ++i) {
    if (a.shape[i] == 0) continue;
    const int64_t span = (a.shape[i] - 1) * a.strides[i];
    (span < 0 ? lo : hi) += span;
  }
  a.extent = a.data + lo;
  a.extent_bytes = static_cast<size_t>(hi - lo);
  a.view.emplace(std::move(info));
  return a;
}

struct StridedCacheRef {
  std::vector<StridedRef> layers;
  StridedKvCache cache;
  bool cuda = false;
};

StridedCacheRef GetStridedCache(const py::sequence& kv_caches, uint32_t chunk_tokens, const std::string& expect_dtype,
                                bool writable) {
  StridedCacheRef r;
  if (kv_caches.size() == 0) throw py::value_error("kv_caches is empty: one view per layer is needed");
  for (size_t i = 0; i < kv_caches.size(); ++i) {
    r.layers.push_back(GetStrided(kv_caches[i], writable, "kv_caches[" + std::to_string(i) + "]"));
  }
  const StridedRef& first = r.layers[0];
  if (first.shape.size() != 5 || (first.shape[0] != 1 && first.shape[0] != 2)) {
    throw py::value_error("kv_caches[0] has shape " + ShapeText(first.shape) +
                          "; a strided cache layer is the view [kv, num_blocks, block_size, num_kv_heads, head_size] "
                          "with kv = 2 (K and V) or 1 (MLA)");
  }
  if (first.shape[0] == 1 && first.shape[3] != 1) {
    throw py::value_error("kv_caches[0] has shape " + ShapeText(first.shape) +
                          "; an MLA view (kv = 1) has exactly one head");
  }
  if (!expect_dtype.empty() && first.dtype != expect_dtype) {
    throw py::value_error("kv_caches dtype " + first.dtype + " does not match the expected dtype " + expect_dtype);
  }
  for (size_t i = 1; i < r.layers.size(); ++i) {
    const StridedRef& l = r.layers[i];
    std::string what = "kv_caches[" + std::to_string(i) + "]";
    if (l.shape != first.shape)
      throw py::value_error(what + " has shape " + ShapeText(l.shape) + " but kv_caches[0] has " +
                            ShapeText(first.shape));
    if (l.strides != first.strides)
      throw py::value_error(what + " has byte strides " + ShapeText(l.strides) + " but kv_caches[0] has " +
                            ShapeText(first.strides));
    if (l.dtype != first.dtype)
      throw py::value_error(what + " has dtype " + l.dtype + " but kv_caches[0] has " + first.dtype);
    if (l.cuda != first.cuda) throw py::value_error(what + " is on another device than kv_caches[0]");
  }
  KvGeometry& g = r.cache.geometry;
  const auto& s = first.shape;
  g.layout = s[0] == 1 ? KvLayout::kMLA : KvLayout::kNHD;
  g.num_layers = static_cast<uint32_t>(r.layers.size());
  g.element_size = static_cast<uint32_t>(first.itemsize);
  g.chunk_tokens = chunk_tokens;
  g.num_blocks = static_cast<uint64_t>(s[1]);
  g.block_size = static_cast<uint32_t>(s[2]);
  g.num_kv_heads = static_cast<uint32_t>(s[3]);
  g.head_size = static_cast<uint32_t>(s[4]);
  Status v = g.Validate();
  if (!v.ok()) throw py::value_error(v.message());
  const auto& st = first.strides;
  r.cache.strides = {st[0], st[1], st[2], st[3], st[4]};
  for (StridedRef& l : r.layers) {
    r.cache.layers.push_back(l.data);
    r.cache.extents.emplace_back(l.extent, l.extent_bytes);
  }
  r.cuda = first.cuda;
  return r;
}

void GatherStrided(const py::sequence& kv_caches, const py::handle& block_ids, const py::handle& chunk_indices,
                   const py::sequence& out, uint32_t chunk_tokens, const std::string& dtype, unsigned threads,
                   uintptr_t stream) {
  StridedCacheRef kv = GetStridedCache(kv_caches, chunk_tokens, dtype, /*writable=*/false);
  std::vector<int64_t> blocks = IntList(block_ids, "block_ids");
  std::vector<int64_t> idx64 = IntList(chunk_indices, "chunk_indices");
  std::vector<uint32_t> idx;
  for (size_t i = 0; i < idx64.size(); ++i) {
    if (idx64[i] < 0 || idx64[i] > 0xFFFFFFFFll) {
      throw py::value_error("chunk_indices[" + std::to_string(i) + "] = " + std::to_string(idx64[i]) +
                            " is negative or too large");
    }
    idx.push_back(static_cast<uint32_t>(idx64[i]));
  }
  std::vector<ArrayRef> chunks = GetChunks(out, /*writable=*/true, "out");
  std::vector<std::span<std::byte>> spans;
  for (const ArrayRef& c : chunks) spans.emplace_back(c.data, c.nbytes);
  Status s;
  {
    py::gil_scoped_release nogil;
    s = kv.cuda ? GatherChunksStridedCuda(kv.cache, blocks, idx, spans, reinterpret_cast<void*>(stream))
                : GatherChunksStrided(kv.cache, blocks, idx, spans, TransferOptions{threads});
  }
  if (s.code() == StatusCode::kInvalidArgument) throw py::value_error(s.message());
  Check(s);
}

void ScatterStrided(const py::sequence& in, const py::sequence& kv_caches, const py::handle& block_ids,
                    uint64_t skip_first_n_tokens, uint32_t chunk_tokens, const std::string& dtype, unsigned threads,
                    uintptr_t stream) {
  StridedCacheRef kv = GetStridedCache(kv_caches, chunk_tokens, dtype, /*writable=*/true);
  std::vector<int64_t> blocks = IntList(block_ids, "block_ids");
  std::vector<ArrayRef> chunks = GetChunks(in, /*writable=*/false, "chunks");
  std::vector<std::span<const std::byte>> spans;
  for (const ArrayRef& c : chunks) spans.emplace_back(c.data, c.nbytes);
  Status s;
  {
    py::gil_scoped_release nogil;
    s = kv.cuda
            ? ScatterChunksStridedCuda(spans, kv.cache, blocks, skip_first_n_tokens, reinterpret_cast<void*>(stream))
            : ScatterChunksStrided(spans, kv.cache, blocks, skip_first_n_tokens, TransferOptions{threads});
  }
  if (s.code() == StatusCode::kInvalidArgument) throw py::value_error(s.message());
  Check(s);
}

uint64_t ChunkNbytesStrided(const py::sequence& kv_caches, uint32_t chunk_tokens) {
  return GetStridedCache(kv_caches, chunk_tokens, "", /*writable=*/false).cache.geometry.chunk_bytes();
}

}  // namespace
}  // namespace shmkv

PYBIND11_MODULE(_native, m) {
  using namespace shmkv;
  m.doc() = "shmkv: zero-copy client of the node-local KV-cache server";
  g_error = py::reinterpret_borrow<py::object>(PyErr_NewException("shmkv.Error", PyExc_RuntimeError, nullptr));
  py::tuple bases = py::make_tuple(g_error, py::reinterpret_borrow<py::object>(PyExc_TimeoutError));
  g_timeout_error = py::reinterpret_steal<py::object>(PyErr_NewException("shmkv.TimeoutError", bases.ptr(), nullptr));
  g_error.attr("__module__") = "shmkv";
  g_timeout_error.attr("__module__") = "shmkv";
  g_expired_error = py::reinterpret_steal<py::object>(PyErr_NewException("shmkv.ExpiredError", g_error.ptr(), nullptr));
  g_expired_error.attr("__module__") = "shmkv";
  g_expired_error.attr("__doc__") =
      "A lease passed its TTL (the server's --reserve-ttl or --pin-ttl). `indices`: the 0-based positions, in the "
      "failed commit's keys, of the expired keys. commit_store committed nothing (the other keys stay reserved); "
      "commit_retrieve released the other keys' pins, and the bytes read for the expired keys must not be used.";
  g_expired_error.attr("indices") = py::list();
  m.attr("Error") = g_error;
  m.attr("TimeoutError") = g_timeout_error;
  m.attr("ExpiredError") = g_expired_error;

  py::class_<SlotBuffer>(m, "_SlotBuffer", py::buffer_protocol()).def_buffer([](SlotBuffer& b) {
    return py::buffer_info(b.data, 1, py::format_descriptor<uint8_t>::format(), 1, {static_cast<ssize_t>(b.size)},
                           {ssize_t{1}}, b.readonly);
  });

  py::class_<PyClient>(m, "Client", R"doc(A worker's connection to shmkv-server (docs/protocol.md).

Thread-safety: a Client may be shared by threads. Its calls are serialised (one request at a
time on the connection; the GIL is released while a call waits on the server), and close() may
be called from any thread at any time: it waits for the call in progress, and every later call
raises shmkv.Error("client is closed"). Slot memoryviews returned by prepare_store and
prepare_retrieve keep the pool mapped: they stay valid after close() (and across a server
restart), though only the protocol (commit_*) says whether their bytes are still meaningful.
prepare_store and prepare_retrieve with with_statuses=True return the slot statuses ("ok",
"exists", "busy", "full", "missing") with the views; last_statuses still holds those of the calling
thread's most recent prepare_* call (other threads' calls do not change what a thread reads).)doc")
      .def(py::init<const std::string&, double, const std::string&, const std::string&, uint32_t, uint32_t,
                    const std::string&, const std::string&, const std::string&>(),
           py::arg("socket_path"), py::arg("timeout") = kDefaultTimeoutSeconds, py::arg("instance_id") = "",
           py::arg("model") = "", py::arg("world_size") = 1, py::arg("rank") = 0, py::arg("dtype") = "",
           py::arg("layout") = "", py::arg("salt") = "")
      .def("info", &PyClient::Info)
      .def(
          "prepare_store",
          [](PyClient& c, const std::vector<py::bytes>& keys, const std::vector<uint64_t>& sizes,
             bool with_statuses) -> py::object {
            py::list views = c.PrepareStore(keys, sizes);
            if (!with_statuses) return views;
            return py::make_tuple(views, c.last_statuses());
          },
          py::arg("keys"), py::arg("sizes"), py::kw_only(), py::arg("with_statuses") = false,
          "a writable view per key (None where it exists, is busy or full); with_statuses=True returns "
          "(views, statuses) from this very call")
      .def("commit_store", &PyClient::CommitStore, py::arg("keys"),
           "makes the reservations visible, all or none; ExpiredError (indices) when a reservation passed "
           "--reserve-ttl: nothing committed, the other keys stay reserved")
      .def("abort_store", &PyClient::AbortStore, py::arg("keys"))
      .def("lookup", &PyClient::Lookup, py::arg("keys"), py::arg("pin") = false)
      .def(
          "prepare_retrieve",
          [](PyClient& c, const std::vector<py::bytes>& keys, bool with_statuses) -> py::object {
            py::list views = c.PrepareRetrieve(keys);
            if (!with_statuses) return views;
            return py::make_tuple(views, c.last_statuses());
          },
          py::arg("keys"), py::kw_only(), py::arg("with_statuses") = false,
          "a read-only view per key (None where it is missing); with_statuses=True returns (views, statuses) "
          "from this very call")
      .def("commit_retrieve", &PyClient::CommitRetrieve, py::arg("keys"),
           "releases the pins; ExpiredError (indices) when a pin passed --pin-ttl: the other pins are released, "
           "and the bytes read for the expired keys must not be used")
      .def("post_commit_store", &PyClient::PostCommitStore, py::arg("keys"),
           "commit_store without waiting for the reply; a failure is raised by the next call or sync()")
      .def("post_commit_retrieve", &PyClient::PostCommitRetrieve, py::arg("keys"),
           "commit_retrieve without waiting for the reply; a failure is raised by the next call or sync()")
      .def("sync", &PyClient::Sync, "waits for the replies of posted commits; raises the first failure")
      .def("remove", &PyClient::Remove, py::arg("keys"))
      .def("clear", &PyClient::Clear)
      .def("stats", &PyClient::Stats)
      .def("put", &PyClient::Put, py::arg("key"), py::arg("data"))
      .def("get", &PyClient::GetBytes, py::arg("key"))
      .def("close", &PyClient::Close)
      .def_property_readonly("last_statuses", &PyClient::last_statuses)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& c, py::args) { c.Close(); });

  m.attr("DEFAULT_CHUNK_TOKENS") = kDefaultChunkTokens;
  m.attr("DEFAULT_TIMEOUT") = kDefaultTimeoutSeconds;
  m.def(
      "chain_root",
      [](const std::string& model, uint32_t world_size, const std::string& dtype, const std::string& layout,
         const std::string& salt) {
        Namespace ns{model, world_size, 0, dtype, layout, salt};
        return DigestBytes(ChainRoot(ns));
      },
      py::arg("model"), py::arg("world_size") = 1, py::arg("dtype") = "", py::arg("layout") = "", py::arg("salt") = "",
      "d[-1] of the digest chain of a deployment (docs/chunk-hashing.md); 32 bytes.");
  m.def(
      "chunk_digests",
      [](const py::bytes& root, const py::handle& token_ids, uint32_t chunk_tokens, bool include_partial) {
        ChunkDigest r = RootFromBytes(root);
        std::vector<uint32_t> tokens = TokenIds(token_ids);
        if (chunk_tokens == 0) throw py::value_error("chunk_tokens must be positive, got 0");
        std::vector<ChunkDigest> ds = Check(ChunkDigests(r, tokens, chunk_tokens, include_partial));
        py::list out;
        for (const ChunkDigest& d : ds) out.append(DigestBytes(d));
        return out;
      },
      py::arg("root"), py::arg("token_ids"), py::arg("chunk_tokens") = kDefaultChunkTokens,
      py::arg("include_partial") = false, "The chained SHA-256 digest of every full chunk of token_ids.");
  m.def("gather", &Gather, py::arg("kv_caches"), py::arg("block_ids"), py::arg("chunk_indices"), py::arg("out"),
        py::kw_only(), py::arg("layout") = "NHD", py::arg("chunk_tokens") = kDefaultChunkTokens, py::arg("dtype") = "",
        py::arg("threads") = 0u, py::arg("stream") = uintptr_t{0},
        "Copies chunk chunk_indices[i] of the paged KV cache into out[i] (docs/paged-kv.md).");
  m.def("scatter", &Scatter, py::arg("chunks"), py::arg("kv_caches"), py::arg("block_ids"),
        py::arg("skip_first_n_tokens") = 0, py::kw_only(), py::arg("layout") = "NHD",
        py::arg("chunk_tokens") = kDefaultChunkTokens, py::arg("dtype") = "", py::arg("threads") = 0u,
        py::arg("stream") = uintptr_t{0}, "Copies chunks[i] (chunk i of the sequence) back into the paged KV cache.");
  m.def("chunk_nbytes", &ChunkNbytes, py::arg("kv_caches"), py::kw_only(), py::arg("layout") = "NHD",
        py::arg("chunk_tokens") = kDefaultChunkTokens, "Bytes of one chunk object of this cache's geometry.");
  m.def("cuda_kernels_compiled", &PagedKvCudaCompiled);
  m.def("gather_strided", &GatherStrided, py::arg("kv_caches"), py::arg("block_ids"), py::arg("chunk_indices"),
        py::arg("out"), py::kw_only(), py::arg("chunk_tokens") = kDefaultChunkTokens, py::arg("dtype") = "",
        py::arg("threads") = 0u, py::arg("stream") = uintptr_t{0},
        "gather over strided layer views [kv, num_blocks, block_size, num_kv_heads, head_size] (kv 2, or 1 for MLA), "
        "any strides (docs/paged-kv.md)");
  m.def("scatter_strided", &ScatterStrided, py::arg("chunks"), py::arg("kv_caches"), py::arg("block_ids"),
        py::arg("skip_first_n_tokens") = 0, py::kw_only(), py::arg("chunk_tokens") = kDefaultChunkTokens,
        py::arg("dtype") = "", py::arg("threads") = 0u, py::arg("stream") = uintptr_t{0},
        "scatter into strided layer views (see gather_strided)");
  m.def("chunk_nbytes_strided", &ChunkNbytesStrided, py::arg("kv_caches"), py::kw_only(),
        py::arg("chunk_tokens") = kDefaultChunkTokens, "Bytes of one chunk object of these strided views.");
}
