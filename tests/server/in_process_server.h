// InProcessServer: a real shmkv Server (segment, socket, event loop) run on a thread of the test
// process, so tests can reach inside it while real clients talk to it over its socket. Tests that
// must kill or stop the server process use the child-process fixture instead
// (tests/client/client_server_test.cc).
//
// Thread-safety: construct, Start and destroy from one thread; the server runs on its own.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "server/server.h"
#include "test_util.h"

namespace shmkv::testing {

class InProcessServer {
 public:
  // Options for a small server on a socket in a fresh temporary directory and a segment name no
  // other test uses; change any of them before Start.
  static ServerOptions DefaultOptions(std::string_view tag) {
    ServerOptions o;
    o.pool_size = 16u << 20;
    o.shm_name = UniqueSegmentName(tag);
    o.prefault = false;
    o.clean_stale = false;  // other tests' live segments are not this test's business
    return o;
  }

  explicit InProcessServer(ServerOptions options) : options_(std::move(options)) {
    char dir[] = "/tmp/shmkv-inproc-XXXXXX";
    if (::mkdtemp(dir) != nullptr) dir_ = dir;
    if (options_.socket_path.empty()) options_.socket_path = dir_ + "/shmkv.sock";
  }
  ~InProcessServer() {
    Stop();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }
  InProcessServer(const InProcessServer&) = delete;
  InProcessServer& operator=(const InProcessServer&) = delete;

  // Creates the segment, binds the socket and starts serving on a thread.
  Status Start() {
    auto server = Server::Start(options_);
    if (!server.ok()) return server.status();
    server_ = std::move(server).value();
    thread_ = std::thread([s = server_.get()] { s->Run(); });
    return Status::Ok();
  }
  // Stops serving and destroys the server (socket and segment removed). Idempotent.
  void Stop() {
    if (!server_) return;
    server_->Stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  const ServerOptions& options() const { return options_; }
  const std::string& socket() const { return options_.socket_path; }
  Server& server() { return *server_; }

 private:
  ServerOptions options_;
  std::string dir_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

}  // namespace shmkv::testing
