// RequestMetrics: the server's per-operation request counts (by outcome) and server-side latency
// histograms, for the Prometheus exporter (metrics/prometheus.h, docs/operations.md "Metrics").
//
// The set of operations and of outcomes is fixed at construction (e.g. the protocol's operation
// names and the status code names); Record takes their indices, so the hot path does no string
// work, no allocation and no locking: three relaxed atomic additions and a bucket search over a
// few bounds.
//
// Thread-safety: Record and Snapshot may be called from any threads at the same time. A snapshot
// taken while requests are recorded may see one request's count without its latency (or the
// other way round); each histogram's count is the sum of its buckets, so a histogram is always
// consistent in itself.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace shmkv::metrics {

// Upper bounds of the latency buckets, in seconds, from 5 µs to 10 s (the +Inf bucket is
// implicit). Control operations answer in microseconds; a retrieve that waits for L2 takes
// milliseconds to seconds.
inline constexpr std::array<double, 20> kLatencyBucketsSeconds = {5e-6, 1e-5,   2.5e-5, 5e-5, 1e-4,   2.5e-4, 5e-4,
                                                                  1e-3, 2.5e-3, 5e-3,   1e-2, 2.5e-2, 5e-2,   0.1,
                                                                  0.25, 0.5,    1.0,    2.5,  5.0,    10.0};

struct OpSnapshot {
  std::string op;
  std::vector<uint64_t> outcomes;  // parallel to RequestSnapshot::outcome_names
  // Requests per bucket, not cumulative: [i] for bucket_bounds[i], the last for +Inf.
  std::vector<uint64_t> buckets;
  double sum_seconds = 0;
  uint64_t count = 0;  // the sum of `buckets`
};

struct RequestSnapshot {
  std::vector<std::string> outcome_names;
  std::vector<double> bucket_bounds;  // seconds, ascending
  std::vector<OpSnapshot> ops;        // in construction order
};

class RequestMetrics {
 public:
  static constexpr size_t kNotFound = static_cast<size_t>(-1);

  // Names are Prometheus label values (any text); duplicates are a caller bug.
  RequestMetrics(std::vector<std::string> ops, std::vector<std::string> outcomes);
  RequestMetrics(const RequestMetrics&) = delete;
  RequestMetrics& operator=(const RequestMetrics&) = delete;

  // Counts one request of operation `op` that ended with `outcome` after `latency` (server-side:
  // from the request's decode to its reply). Indices out of range are ignored.
  void Record(size_t op, size_t outcome, std::chrono::nanoseconds latency);

  RequestSnapshot Snapshot() const;

  // Index of a name given at construction, or kNotFound. For wiring and tests, not the hot path.
  size_t OpIndex(std::string_view op) const;
  size_t OutcomeIndex(std::string_view outcome) const;

 private:
  static constexpr size_t kBuckets = kLatencyBucketsSeconds.size() + 1;
  struct PerOp {
    std::unique_ptr<std::atomic<uint64_t>[]> outcomes;
    std::array<std::atomic<uint64_t>, kBuckets> buckets{};
    std::atomic<uint64_t> sum_ns{0};
  };

  std::vector<std::string> ops_;
  std::vector<std::string> outcomes_;
  std::array<uint64_t, kLatencyBucketsSeconds.size()> bounds_ns_{};
  std::unique_ptr<PerOp[]> per_op_;
};

}  // namespace shmkv::metrics
