#include "file_worker/tcp_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common/log.h"
#include "file_worker/protocol.h"

namespace shmkv::file_worker {

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(fmt::format("--listen {}: {}", Quote(text, 128), why));
  };
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("expected [IPV6]:PORT");
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("expected HOST:PORT");
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return bad("write an IPv6 address in brackets: [::1]:PORT");
  }
  auto port = ParseUnsigned(port_text, /*allow_hex=*/false, "port");
  if (!port.ok()) return bad(port.status().message());
  if (*port > 65535) return bad("port must be at most 65535");
  if (host.empty() || host == "localhost") host = "127.0.0.1";

  ListenAddress out;
  const std::string h(host);
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  if (::inet_pton(AF_INET, h.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(static_cast<uint16_t>(*port));
    std::memcpy(&out.addr, &v4, sizeof v4);
    out.addr_len = sizeof v4;
    out.loopback = (ntohl(v4.sin_addr.s_addr) >> 24) == 127;
  } else if (::inet_pton(AF_INET6, h.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(static_cast<uint16_t>(*port));
    std::memcpy(&out.addr, &v6, sizeof v6);
    out.addr_len = sizeof v6;
    const auto* b = v6.sin6_addr.s6_addr;
    const bool v4_mapped = std::all_of(b, b + 10, [](uint8_t x) { return x == 0; }) && b[10] == 0xff && b[11] == 0xff;
    out.loopback = IN6_IS_ADDR_LOOPBACK(&v6.sin6_addr) || (v4_mapped && b[12] == 127);
  } else {
    return bad("HOST must be an IPv4/IPv6 address or 'localhost' (names are not resolved)");
  }
  return out;
}

std::string FormatAddress(const sockaddr_storage& addr) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    sockaddr_in v4{};
    std::memcpy(&v4, &addr, sizeof v4);
    ::inet_ntop(AF_INET, &v4.sin_addr, buf, sizeof buf);
    return fmt::format("{}:{}", buf, ntohs(v4.sin_port));
  }
  sockaddr_in6 v6{};
  std::memcpy(&v6, &addr, sizeof v6);
  ::inet_ntop(AF_INET6, &v6.sin6_addr, buf, sizeof buf);
  return fmt::format("[{}]:{}", buf, ntohs(v6.sin6_port));
}

Result<TcpServer> TcpServer::Listen(const ListenAddress& address) {
  auto s = sys::Call([&] { return ::socket(address.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0); });
  if (!s.ok()) return s.ToStatus("socket");
  TcpServer server;
  server.fd_ = sys::UniqueFd(s.value);
  const int one = 1;
  SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                          return ::setsockopt(server.fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
                        }).ToStatus("setsockopt SO_REUSEADDR"));
  const std::string where = FormatAddress(address.addr);
  SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                          return ::bind(server.fd_.get(), reinterpret_cast<const sockaddr*>(&address.addr),
                                        address.addr_len);
                        }).ToStatus(fmt::format("bind {}", where)));
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::listen(server.fd_.get(), 64); }).ToStatus(fmt::format("listen on {}", where)));
  return server;
}

std::string TcpServer::BoundAddress() const {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  return FormatAddress(addr);
}

namespace {

// One connection's standing, shared by the accept loop and the connection's thread.
struct ClientState {
  std::atomic<bool> done{false};
  bool authenticated = false;  // guarded by Admission::mu
  bool evicted = false;        // guarded by Admission::mu: closed to make room; may not authenticate
};

struct Admission {
  std::mutex mu;
  size_t authenticated = 0;  // clients holding a --max-clients slot
};

}  // namespace

Status TcpServer::Run(const FileStore& store, ThreadPool& pool, const Options& options, int stop_fd) {
  if (options.session.token.empty()) {
    return Status::InvalidArgument("TCP mode needs a token: every client must authenticate");
  }
  struct Client {
    sys::UniqueFd fd;  // closed here after the thread is joined, so the number is never reused early
    std::thread thread;
    std::shared_ptr<ClientState> state;
  };
  std::list<Client> clients;  // in accept order: the first unauthenticated one is the oldest
  auto admission = std::make_shared<Admission>();
  const size_t max_unauthenticated = std::max<size_t>(options.max_unauthenticated, 1);
  auto reap = [&](bool all) {
    for (auto it = clients.begin(); it != clients.end();) {
      if (all || it->state->done.load()) {
        it->thread.join();
        it = clients.erase(it);
      } else {
        ++it;
      }
    }
  };
  // Makes room for one more unauthenticated connection by closing the oldest one over the cap. An
  // attacker who keeps opening connections then only pushes out its own older ones, while a client
  // that authenticates right after connecting (as every real client does) gets in.
  auto evict_unauthenticated = [&] {
    std::lock_guard lock(admission->mu);
    size_t waiting = 0;
    Client* oldest = nullptr;
    for (Client& c : clients) {
      if (c.state->done.load() || c.state->authenticated || c.state->evicted) continue;
      if (oldest == nullptr) oldest = &c;
      ++waiting;
    }
    if (waiting < max_unauthenticated || oldest == nullptr) return;
    oldest->state->evicted = true;
    // Its session has written nothing yet (an unauthenticated session replies only to its first
    // line, and then it is authenticated or ended), so this line cannot tear a reply.
    const std::string msg = ErrorReply(
        fmt::format("too many unauthenticated connections (at most {}); closing the oldest", max_unauthenticated));
    (void)::send(oldest->fd.get(), msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(oldest->fd.get(), SHUT_RDWR);  // its reader sees end of input and the session ends
    Log().info("file worker: closed the oldest unauthenticated connection (at most {})", max_unauthenticated);
  };

  for (;;) {
    reap(false);
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
    // The timeout only bounds how long finished client threads wait to be joined.
    auto p = sys::Call([&] { return ::poll(fds, stop_fd >= 0 ? 2 : 1, 500); });
    if (!p.ok()) return p.ToStatus("poll");
    if (stop_fd >= 0 && (fds[1].revents & POLLIN) != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    auto a =
        sys::Call([&] { return ::accept4(fd_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_CLOEXEC); });
    if (!a.ok()) {
      // EMFILE/ENFILE/ECONNABORTED: log and keep serving; back off so a full table does not spin.
      Log().warn("file worker: accept: {}", std::strerror(a.err));
      if (a.err == EMFILE || a.err == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    sys::UniqueFd cfd(a.value);
    const int one = 1;
    (void)::setsockopt(cfd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    reap(false);  // a client that ended while we waited in poll must not count
    evict_unauthenticated();
    Log().info("file worker: client {} connected", FormatAddress(peer));
    Client& c = clients.emplace_back();
    c.fd = std::move(cfd);
    c.state = std::make_shared<ClientState>();
    SessionOptions session_options = options.session;
    // Admission happens when the token matched: only then does a client take a --max-clients slot.
    session_options.on_authenticated = [admission, state = c.state, max = options.max_clients]() -> Status {
      std::lock_guard lock(admission->mu);
      if (state->evicted) {
        return Status::Busy("too many unauthenticated connections; this one was closed to make room");
      }
      if (admission->authenticated >= max) return Status::Busy(fmt::format("too many clients (at most {})", max));
      ++admission->authenticated;
      state->authenticated = true;
      return Status::Ok();
    };
    c.thread = std::thread([&store, &pool, admission, session_options = std::move(session_options), fd = c.fd.get(),
                            state = c.state, who = FormatAddress(peer)] {
      Session session(store, pool, session_options);
      const Session::End end = session.Serve(fd, fd);
      ::shutdown(fd, SHUT_RDWR);  // the client sees EOF now, not when the fd is closed later
      Log().info("file worker: client {} done ({})", who, SessionEndName(end));
      std::lock_guard lock(admission->mu);
      if (state->authenticated) --admission->authenticated;  // its slot is free from now on
      state->done.store(true);  // under the lock: never counted as waiting once its slot is given back
    });
  }

  fd_.reset();  // refuse new connections at once
  // Unblock every session: readers see EOF, writers stop waiting for a peer that does not read.
  for (auto& c : clients) ::shutdown(c.fd.get(), SHUT_RDWR);
  reap(true);
  return Status::Ok();
}

}  // namespace shmkv::file_worker
