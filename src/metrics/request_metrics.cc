#include "metrics/request_metrics.h"

#include <algorithm>
#include <cmath>

namespace shmkv::metrics {

RequestMetrics::RequestMetrics(std::vector<std::string> ops, std::vector<std::string> outcomes)
    : ops_(std::move(ops)), outcomes_(std::move(outcomes)), per_op_(new PerOp[ops_.size()]) {
  for (size_t i = 0; i < kLatencyBucketsSeconds.size(); ++i) {
    bounds_ns_[i] = static_cast<uint64_t>(std::llround(kLatencyBucketsSeconds[i] * 1e9));
  }
  for (size_t i = 0; i < ops_.size(); ++i) {
    per_op_[i].outcomes.reset(new std::atomic<uint64_t>[outcomes_.size()]);
    for (size_t j = 0; j < outcomes_.size(); ++j) per_op_[i].outcomes[j].store(0, std::memory_order_relaxed);
  }
}

void RequestMetrics::Record(size_t op, size_t outcome, std::chrono::nanoseconds latency) {
  if (op >= ops_.size() || outcome >= outcomes_.size()) return;
  PerOp& p = per_op_[op];
  const uint64_t ns = latency.count() < 0 ? 0 : static_cast<uint64_t>(latency.count());
  // Most requests land in the first buckets: a linear search stops early.
  size_t b = 0;
  while (b < bounds_ns_.size() && ns > bounds_ns_[b]) ++b;
  p.outcomes[outcome].fetch_add(1, std::memory_order_relaxed);
  p.buckets[b].fetch_add(1, std::memory_order_relaxed);
  p.sum_ns.fetch_add(ns, std::memory_order_relaxed);
}

RequestSnapshot RequestMetrics::Snapshot() const {
  RequestSnapshot s;
  s.outcome_names = outcomes_;
  s.bucket_bounds.assign(kLatencyBucketsSeconds.begin(), kLatencyBucketsSeconds.end());
  s.ops.reserve(ops_.size());
  for (size_t i = 0; i < ops_.size(); ++i) {
    const PerOp& p = per_op_[i];
    OpSnapshot o;
    o.op = ops_[i];
    o.outcomes.reserve(outcomes_.size());
    for (size_t j = 0; j < outcomes_.size(); ++j) o.outcomes.push_back(p.outcomes[j].load(std::memory_order_relaxed));
    o.buckets.reserve(kBuckets);
    for (const auto& b : p.buckets) {
      o.buckets.push_back(b.load(std::memory_order_relaxed));
      o.count += o.buckets.back();
    }
    o.sum_seconds = static_cast<double>(p.sum_ns.load(std::memory_order_relaxed)) / 1e9;
    s.ops.push_back(std::move(o));
  }
  return s;
}

size_t RequestMetrics::OpIndex(std::string_view op) const {
  auto it = std::find(ops_.begin(), ops_.end(), op);
  return it == ops_.end() ? kNotFound : static_cast<size_t>(it - ops_.begin());
}

size_t RequestMetrics::OutcomeIndex(std::string_view outcome) const {
  auto it = std::find(outcomes_.begin(), outcomes_.end(), outcome);
  return it == outcomes_.end() ? kNotFound : static_cast<size_t>(it - outcomes_.begin());
}

}  // namespace shmkv::metrics
