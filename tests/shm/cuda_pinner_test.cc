#include "shm/cuda_pinner.h"

#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

#include "common/log.h"
#include "shmkv/segment.h"
#include "test_util.h"

namespace shmkv {
namespace {

TEST(CudaHostPinner, WithoutARuntimeRegisterIsUnavailableAndLogsOnce) {
  CudaHostPinner pinner({"libshmkv-no-such-cudart.so"});
  EXPECT_FALSE(pinner.available());
  EXPECT_NE(pinner.unavailable_reason().find("no CUDA runtime"), std::string::npos);

  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  Log().sinks().push_back(sink);
  const auto old_level = Log().level();
  Log().set_level(spdlog::level::debug);  // a debug line: every client process would print it
  std::vector<char> buf(4096);
  Status first = pinner.Register(buf.data(), buf.size());
  Status second = pinner.Register(buf.data(), buf.size());
  Log().sinks().pop_back();
  Log().set_level(old_level);

  EXPECT_EQ(first.code(), StatusCode::kUnavailable);
  EXPECT_EQ(second.code(), StatusCode::kUnavailable);
  const std::string text = captured.str();
  const auto at = text.find("CUDA pinning skipped");
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_EQ(text.find("CUDA pinning skipped", at + 1), std::string::npos) << "logged more than once:\n" << text;
}

TEST(CudaHostPinner, SegmentsArePinnedExactlyWhenARuntimeAndDeviceExist) {
  // On a machine without CUDA this exercises the skip path end to end; on a GPU machine the
  // same test checks that the pool really got registered.
  SegmentCreateOptions o;
  o.name = testing::UniqueSegmentName("pin");
  o.size = 1 << 20;
  auto seg = SharedSegment::Create(o);
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(seg->pinned(), CudaHostPinner::Instance().available()) << CudaHostPinner::Instance().unavailable_reason();
  auto worker = SharedSegment::Attach(seg->name());
  ASSERT_TRUE(worker.ok());
  EXPECT_EQ(worker->pinned(), CudaHostPinner::Instance().available());
  seg->data()[0] = std::byte{1};  // the pool is usable either way
  EXPECT_EQ(worker->data()[0], std::byte{1});
}

TEST(CudaHostPinner, PinningCanBeTurnedOff) {
  SegmentCreateOptions o;
  o.name = testing::UniqueSegmentName("nopin");
  o.size = 1 << 20;
  o.pin_with_cuda = false;
  auto seg = SharedSegment::Create(o);
  ASSERT_TRUE(seg.ok());
  EXPECT_FALSE(seg->pinned());
}

}  // namespace
}  // namespace shmkv
