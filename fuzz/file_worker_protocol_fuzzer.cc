// libFuzzer target: the file worker's command-line parsing (src/file_worker/protocol.*), the path
// rules of FileStore::Normalize and the --listen parser. Pure functions: the input is one command
// line (as a client would send it, without its '\n'; "$LONG" stands for 8200 bytes of 'a', so
// overlong lines are reached early), and every result is checked against the rules the rest of
// the worker relies on. A violated rule aborts, which libFuzzer reports.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "file_worker/file_store.h"
#include "file_worker/protocol.h"
#include "file_worker/tcp_server.h"

namespace {

using namespace shmkv::file_worker;

[[noreturn]] void Violated(const char* rule, std::string_view input) {
  std::fprintf(stderr, "fuzz rule violated: %s (input %zu bytes)\n", rule, input.size());
  std::abort();
}

#define FUZZ_CHECK(cond, input)          \
  do {                                   \
    if (!(cond)) Violated(#cond, input); \
  } while (0)

bool HasControlOrSpace(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return true;
  }
  return false;
}

// A reply is exactly one printable line: the framing of every client depends on it.
void CheckReply(const std::string& reply, std::string_view input) {
  FUZZ_CHECK(!reply.empty() && reply.back() == '\n', input);
  for (size_t i = 0; i + 1 < reply.size(); ++i) {
    const auto u = static_cast<unsigned char>(reply[i]);
    FUZZ_CHECK(u >= 0x20 && u != 0x7f, input);
  }
  FUZZ_CHECK(reply.size() <= 1100, input);
}

// One store for the whole run in a temporary root (Normalize is lexical; nothing is written),
// removed when the fuzzer exits.
struct TempStore {
  TempStore() {
    dir = (std::filesystem::temp_directory_path() / "shmkv_fuzz_protocol_XXXXXX").string();
    if (::mkdtemp(dir.data()) == nullptr) std::abort();
    auto s = FileStore::Open(dir, {});
    if (!s.ok()) std::abort();
    store = std::make_unique<FileStore>(std::move(s).value());
  }
  ~TempStore() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string dir;
  std::unique_ptr<FileStore> store;
};

const FileStore& Store() {
  static TempStore instance;
  return *instance.store;
}

void CheckNormalize(std::string_view path, std::string_view input) {
  for (bool allow_root : {false, true}) {
    auto rel = Store().Normalize(path, allow_root);
    if (!rel.ok()) {
      CheckReply(ErrorReply(rel.status().message()), input);
      continue;
    }
    const std::string& r = rel->str();
    FUZZ_CHECK(allow_root || !r.empty(), input);
    FUZZ_CHECK(r.empty() || (r.front() != '/' && r.back() != '/'), input);
    FUZZ_CHECK(!HasControlOrSpace(r), input);
    FUZZ_CHECK(r.size() <= 4096, input);
    // Every component is a plain name: never empty, ".", ".." or a reserved temp name.
    size_t start = 0;
    while (start < r.size()) {
      const size_t slash = std::min(r.find('/', start), r.size());
      const std::string_view comp(r.data() + start, slash - start);
      FUZZ_CHECK(!comp.empty() && comp != "." && comp != "..", input);
      FUZZ_CHECK(!comp.starts_with(kTempPrefix), input);
      FUZZ_CHECK(comp.size() <= 255, input);
      start = slash + 1;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t raw_size) {
  std::string expanded(reinterpret_cast<const char*>(data), raw_size);
  for (size_t at = 0; (at = expanded.find("$LONG", at)) != std::string::npos; at += 8200) {
    expanded.replace(at, 5, std::string(8200, 'a'));
  }
  const std::string_view input(expanded);
  const size_t size = input.size();

  auto cmd = ParseCommand(input);
  if (!cmd.ok()) {
    FUZZ_CHECK(cmd.status().code() == shmkv::StatusCode::kInvalidArgument, input);
    CheckReply(ErrorReply(cmd.status().message()), input);
  } else {
    // An accepted line never carries a control byte into a path or a name.
    FUZZ_CHECK(!HasControlOrSpace(cmd->text), input);
    FUZZ_CHECK(input.size() <= kMaxLineBytes + 1, input);
    switch (cmd->verb) {
      case Verb::kAttach: {
        FUZZ_CHECK(cmd->size > 0, input);
        auto name = CheckSegmentName(cmd->text, "");
        if (name.ok()) {
          FUZZ_CHECK(!name->empty() && name->size() <= kMaxSegmentNameBytes, input);
          FUZZ_CHECK(name->find('/') == std::string::npos && *name != "." && *name != "..", input);
          // With a prefix, an accepted name starts with it.
          auto prefixed = CheckSegmentName(cmd->text, "lmcache_l1_pool_");
          FUZZ_CHECK(!prefixed.ok() || prefixed->starts_with("lmcache_l1_pool_"), input);
        } else {
          CheckReply(ErrorReply(name.status().message()), input);
        }
        // Bounds as a WRITE at the segment's base would check them.
        auto region = CheckRegion(cmd->base_addr, cmd->size, cmd->base_addr, cmd->size);
        FUZZ_CHECK(region.ok() && region->offset == 0 && region->len == cmd->size, input);
        break;
      }
      case Verb::kWrite:
      case Verb::kRead: {
        // Round trip of the numbers, and the overflow-safe bound against a few segment shapes.
        FUZZ_CHECK(*ParseUnsigned(std::to_string(cmd->len), false, "len") == cmd->len, input);
        FUZZ_CHECK(*ParseUnsigned(std::to_string(cmd->data_ptr), true, "data_ptr") == cmd->data_ptr, input);
        for (uint64_t base : {uint64_t{0}, uint64_t{4096}, cmd->data_ptr, UINT64_MAX - 4096}) {
          for (uint64_t seg : {uint64_t{1}, uint64_t{1} << 20, UINT64_MAX}) {
            auto region = CheckRegion(base, seg, cmd->data_ptr, cmd->len);
            if (region.ok()) {
              FUZZ_CHECK(cmd->data_ptr >= base && region->offset == cmd->data_ptr - base, input);
              FUZZ_CHECK(region->len == cmd->len && region->len <= seg, input);
              FUZZ_CHECK(region->offset <= seg - region->len, input);  // offset + len <= seg, no wrap
              (void)CheckDirectAlignment(*region);
            } else {
              CheckReply(ErrorReply(region.status().message()), input);
            }
          }
        }
        CheckNormalize(cmd->text, input);
        break;
      }
      case Verb::kExists:
      case Verb::kDelete:
      case Verb::kStat: CheckNormalize(cmd->text, input); break;
      case Verb::kList: CheckNormalize(cmd->text.empty() ? std::string_view(".") : cmd->text, input); break;
      case Verb::kAuth: FUZZ_CHECK(!cmd->text.empty(), input); break;
      case Verb::kQuit: break;
    }
  }

  // The same bytes as a client path, a segment name and a --listen value: none may crash, and
  // every error makes a one-line reply.
  if (size <= 8192) CheckNormalize(input, input);
  if (auto name = CheckSegmentName(input, ""); !name.ok()) CheckReply(ErrorReply(name.status().message()), input);
  if (auto addr = ParseListenAddress(input); addr.ok()) {
    FUZZ_CHECK(addr->addr_len > 0 && addr->addr_len <= sizeof addr->addr, input);
    (void)FormatAddress(addr->addr);
  }
  CheckReply(ErrorReply(input), input);
  FUZZ_CHECK(Quote(input, 64).size() <= 64 + 5, input);
  return 0;
}
