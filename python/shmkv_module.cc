// Python bindings over the C++ client. Slots are exposed zero-copy: each is a memoryview over
// the mapped pool, kept alive by the buffer object it views (which holds the mapping), so numpy
// and torch.frombuffer views stay valid even after the client reconnects or closes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>

#include "shmkv/client.h"

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

py::object g_error, g_timeout_error;

[[noreturn]] void Raise(const Status& s) {
  py::object type = s.code() == StatusCode::kTimeout ? g_timeout_error : g_error;
  PyErr_SetString(type.ptr(), s.ToString().c_str());
  throw py::error_already_set();
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

class PyClient {
  // Network calls drop the GIL; the mutex keeps the (not thread-safe) client to one thread.
  Client& Get() {
    if (!client_) throw py::value_error("the client is closed");
    return *client_;
  }
  template <typename F>
  auto Locked(F&& f) {
    Client& c = Get();
    py::gil_scoped_release nogil;
    std::lock_guard lock(mu_);
    return f(c);
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
    Client& c = Get();
    const RegistrationInfo& i = c.info();
    py::dict d;
    d["session"] = i.session;
    d["shm_name"] = i.shm_name;
    d["pool_size"] = i.pool_size;
    d["alignment"] = i.alignment;
    d["server_version"] = i.server_version;
    d["protocol"] = i.protocol;
    d["generation"] = i.generation;
    d["pinned"] = c.mapping() && c.mapping()->pinned();
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
  std::vector<std::string> Remove(const std::vector<py::bytes>& keys) {
    auto k = Keys(keys);
    return Check(Locked([&](Client& c) { return c.Remove(k); }));
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
    std::lock_guard lock(mu_);
    client_.reset();
  }
  const std::vector<std::string>& last_statuses() const { return last_statuses_; }

 private:
  py::list Views(Result<SlotBatch> r, bool readonly) {
    SlotBatch batch = Check(std::move(r));
    py::list out;
    last_statuses_.clear();
    for (const Slot& s : batch.slots) {
      last_statuses_.emplace_back(SlotStatusName(s.status));
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
  std::unique_ptr<Client> client_;
  std::vector<std::string> last_statuses_;
};

}  // namespace
}  // namespace shmkv

PYBIND11_MODULE(shmkv, m) {
  using namespace shmkv;
  m.doc() = "shmkv: zero-copy client of the node-local KV-cache server";
  g_error = py::reinterpret_borrow<py::object>(PyErr_NewException("shmkv.Error", PyExc_RuntimeError, nullptr));
  py::tuple bases = py::make_tuple(g_error, py::reinterpret_borrow<py::object>(PyExc_TimeoutError));
  g_timeout_error = py::reinterpret_steal<py::object>(PyErr_NewException("shmkv.TimeoutError", bases.ptr(), nullptr));
  m.attr("Error") = g_error;
  m.attr("TimeoutError") = g_timeout_error;

  py::class_<SlotBuffer>(m, "_SlotBuffer", py::buffer_protocol()).def_buffer([](SlotBuffer& b) {
    return py::buffer_info(b.data, 1, py::format_descriptor<uint8_t>::format(), 1, {static_cast<ssize_t>(b.size)},
                           {ssize_t{1}}, b.readonly);
  });

  py::class_<PyClient>(m, "Client")
      .def(py::init<const std::string&, double, const std::string&, const std::string&, uint32_t, uint32_t,
                    const std::string&, const std::string&, const std::string&>(),
           py::arg("socket_path"), py::arg("timeout") = 5.0, py::arg("instance_id") = "", py::arg("model") = "",
           py::arg("world_size") = 1, py::arg("rank") = 0, py::arg("dtype") = "", py::arg("layout") = "",
           py::arg("salt") = "")
      .def("info", &PyClient::Info)
      .def("prepare_store", &PyClient::PrepareStore, py::arg("keys"), py::arg("sizes"))
      .def("commit_store", &PyClient::CommitStore, py::arg("keys"))
      .def("abort_store", &PyClient::AbortStore, py::arg("keys"))
      .def("lookup", &PyClient::Lookup, py::arg("keys"), py::arg("pin") = false)
      .def("prepare_retrieve", &PyClient::PrepareRetrieve, py::arg("keys"))
      .def("commit_retrieve", &PyClient::CommitRetrieve, py::arg("keys"))
      .def("remove", &PyClient::Remove, py::arg("keys"))
      .def("clear", &PyClient::Clear)
      .def("stats", &PyClient::Stats)
      .def("put", &PyClient::Put, py::arg("key"), py::arg("data"))
      .def("get", &PyClient::GetBytes, py::arg("key"))
      .def("close", &PyClient::Close)
      .def_property_readonly("last_statuses", &PyClient::last_statuses)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& c, py::args) { c.Close(); });
}
