// SlotAllocator carves the L1 pool [0, pool_size) into aligned slots.
//
// It is a two-level segregated-fit allocator (TLSF) over allocation units of `alignment` bytes:
// Allocate and Free cost O(1) in the number of live slots and in the pool size (a few bitmap
// scans and list splices), free neighbours coalesce at once, and the fit is good (the block
// chosen is at most 1/16 larger than needed before splitting).
//
// All metadata lives in this object, in the server's private memory; the pool bytes are never
// read or written, so nothing a worker writes into the segment can corrupt the allocator.
//
// Contracts: every offset returned is a multiple of `alignment` and [offset, offset + size)
// lies inside the pool and overlaps no other live slot. Bad input (size 0, larger than the pool,
// double free, unknown offset) returns kInvalidArgument and changes nothing. Debug builds check
// local invariants on every call; CheckInvariants() verifies the whole structure on demand.
//
// Thread-safety: none. One thread (the server's event loop) owns an allocator.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "shmkv/status.h"

namespace shmkv {

struct SlotAllocatorStats {
  uint64_t pool_size = 0;   // usable bytes (a whole number of units)
  uint64_t used_bytes = 0;  // bytes in live slots, rounded up to units
  uint64_t live_slots = 0;
  uint64_t free_blocks = 0;   // number of maximal free extents
  uint64_t largest_free = 0;  // bytes in the largest free extent
};

class SlotAllocator {
 public:
  // `alignment`: a power of two >= 64 (shmkv uses 4096 so O_DIRECT works from the pool).
  // `pool_size`: bytes; the tail that is not a whole unit is never handed out. Units are
  // counted in 32 bits, so pool_size / alignment must stay below 2^32.
  static Result<SlotAllocator> Create(uint64_t pool_size, uint64_t alignment = 4096);

  SlotAllocator(SlotAllocator&&) noexcept = default;
  SlotAllocator& operator=(SlotAllocator&&) noexcept = default;
  SlotAllocator(const SlotAllocator&) = delete;
  SlotAllocator& operator=(const SlotAllocator&) = delete;

  // Returns the offset of a slot of at least `size` bytes, or kFull when no free extent fits
  // now (callers evict and retry), or kInvalidArgument for 0 or a size beyond the pool.
  Result<uint64_t> Allocate(uint64_t size);
  // Frees the slot that starts at `offset`. A double free or an offset that starts no live slot
  // is kInvalidArgument and leaves the allocator unchanged.
  Status Free(uint64_t offset);
  // The rounded size of the live slot at `offset`.
  Result<uint64_t> SlotSize(uint64_t offset) const;

  // O(size of one free list) for largest_free; the accessors below are O(1).
  SlotAllocatorStats stats() const;
  uint64_t used_bytes() const { return used_units_ << align_shift_; }
  uint64_t live_slots() const { return live_slots_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t pool_size() const { return uint64_t{total_units_} * alignment_; }

  // Walks every block and every free list: blocks tile the pool with no gap or overlap, no two
  // free blocks touch (coalesced), each free block sits in exactly the list its size maps to,
  // bitmaps match the lists, and the counters match the walk. O(blocks); for tests.
  Status CheckInvariants() const;

 private:
  static constexpr int kSlLog2 = 4;  // 16 second-level classes per power of two
  static constexpr uint32_t kSlCount = 1u << kSlLog2;
  static constexpr int kFlCount = 32 - kSlLog2 + 1;
  static constexpr uint32_t kNil = UINT32_MAX;

  enum class BlockState : uint8_t { kFree, kUsed, kDead };
  struct Block {
    uint32_t start;  // in units
    uint32_t units;
    uint32_t prev_phys;  // record of the block just below, or kNil
    uint32_t next_phys;  // record of the block just above, or kNil
    uint32_t prev_free;  // free-list links (free blocks only)
    uint32_t next_free;
    BlockState state;
  };

  SlotAllocator(uint32_t total_units, uint64_t alignment);

  static void Mapping(uint32_t units, int* fl, int* sl);
  uint32_t FindFree(uint32_t units) const;
  void InsertFree(uint32_t id);
  void RemoveFree(uint32_t id);
  uint32_t NewRecord(const Block& b);
  void KillRecord(uint32_t id);
  Status BadOffset(uint64_t offset, std::string_view what) const;
  // Record id of the live slot at `offset`, or kNil.
  uint32_t LiveSlotAt(uint64_t offset) const;

  uint64_t alignment_;
  int align_shift_;
  uint32_t total_units_;
  uint64_t used_units_ = 0;
  uint64_t live_slots_ = 0;
  uint64_t free_blocks_ = 0;
  std::vector<Block> blocks_;
  std::vector<uint32_t> dead_records_;
  std::vector<uint32_t> block_at_unit_;  // record id for a unit that starts a block, else kNil
  uint32_t fl_bitmap_ = 0;
  std::array<uint32_t, kFlCount> sl_bitmap_{};
  std::array<std::array<uint32_t, kSlCount>, kFlCount> heads_{};
};

}  // namespace shmkv
