#include "pool/slot_allocator.h"

#include <bit>
#include <limits>

#include <fmt/format.h>

#include "common/check.h"

namespace shmkv {

Result<SlotAllocator> SlotAllocator::Create(uint64_t pool_size, uint64_t alignment) {
  if (alignment < 64 || !std::has_single_bit(alignment)) {
    return Status::InvalidArgument(fmt::format("slot alignment {} is not a power of two >= 64", alignment));
  }
  const uint64_t units = pool_size / alignment;
  if (units == 0) {
    return Status::InvalidArgument(
        fmt::format("pool of {} bytes is smaller than one {}-byte slot", pool_size, alignment));
  }
  if (units >= kNil) {
    return Status::InvalidArgument(fmt::format("pool of {} bytes has {} units of {} bytes; at most {} are supported",
                                               pool_size, units, alignment, kNil - 1));
  }
  return SlotAllocator(static_cast<uint32_t>(units), alignment);
}

SlotAllocator::SlotAllocator(uint32_t total_units, uint64_t alignment)
    : alignment_(alignment),
      align_shift_(std::countr_zero(alignment)),
      total_units_(total_units),
      block_at_unit_(total_units, kNil) {
  for (auto& row : heads_) row.fill(kNil);
  const uint32_t id = NewRecord({0, total_units, kNil, kNil, kNil, kNil, BlockState::kFree});
  block_at_unit_[0] = id;
  InsertFree(id);
}

void SlotAllocator::Mapping(uint32_t units, int* fl, int* sl) {
  if (units < kSlCount) {
    *fl = 0;
    *sl = static_cast<int>(units);
    return;
  }
  const int msb = std::bit_width(units) - 1;
  *fl = msb - kSlLog2 + 1;
  *sl = static_cast<int>((units >> (msb - kSlLog2)) ^ kSlCount);
}

uint32_t SlotAllocator::FindFree(uint32_t units) const {
  // Round the request up to the next class boundary, so every block of the class found fits.
  uint64_t rounded = units;
  if (units >= kSlCount) rounded += (uint64_t{1} << (std::bit_width(units) - 1 - kSlLog2)) - 1;
  if (rounded > std::numeric_limits<uint32_t>::max()) return kNil;
  int fl = 0, sl = 0;
  Mapping(static_cast<uint32_t>(rounded), &fl, &sl);
  if (fl >= kFlCount) return kNil;
  uint32_t sl_map = sl_bitmap_[fl] & (~0u << sl);
  if (sl_map == 0) {
    const uint32_t fl_map = fl + 1 < 32 ? fl_bitmap_ & (~0u << (fl + 1)) : 0;
    if (fl_map == 0) return kNil;
    fl = std::countr_zero(fl_map);
    sl_map = sl_bitmap_[fl];
  }
  return heads_[fl][std::countr_zero(sl_map)];
}

void SlotAllocator::InsertFree(uint32_t id) {
  Block& b = blocks_[id];
  int fl = 0, sl = 0;
  Mapping(b.units, &fl, &sl);
  const uint32_t head = heads_[fl][sl];
  b.state = BlockState::kFree;
  b.prev_free = kNil;
  b.next_free = head;
  if (head != kNil) blocks_[head].prev_free = id;
  heads_[fl][sl] = id;
  fl_bitmap_ |= 1u << fl;
  sl_bitmap_[fl] |= 1u << sl;
  ++free_blocks_;
}

void SlotAllocator::RemoveFree(uint32_t id) {
  Block& b = blocks_[id];
  SHMKV_DCHECK(b.state == BlockState::kFree);
  int fl = 0, sl = 0;
  Mapping(b.units, &fl, &sl);
  if (b.prev_free != kNil) {
    blocks_[b.prev_free].next_free = b.next_free;
  } else {
    SHMKV_DCHECK(heads_[fl][sl] == id);
    heads_[fl][sl] = b.next_free;
    if (b.next_free == kNil) {
      sl_bitmap_[fl] &= ~(1u << sl);
      if (sl_bitmap_[fl] == 0) fl_bitmap_ &= ~(1u << fl);
    }
  }
  if (b.next_free != kNil) blocks_[b.next_free].prev_free = b.prev_free;
  b.prev_free = b.next_free = kNil;
  --free_blocks_;
}

uint32_t SlotAllocator::NewRecord(const Block& b) {
  if (!dead_records_.empty()) {
    const uint32_t id = dead_records_.back();
    dead_records_.pop_back();
    blocks_[id] = b;
    return id;
  }
  blocks_.push_back(b);
  return static_cast<uint32_t>(blocks_.size() - 1);
}

void SlotAllocator::KillRecord(uint32_t id) {
  Block& b = blocks_[id];
  block_at_unit_[b.start] = kNil;
  b.state = BlockState::kDead;
  dead_records_.push_back(id);
}

Result<uint64_t> SlotAllocator::Allocate(uint64_t size) {
  if (size == 0) return Status::InvalidArgument("cannot allocate a slot of 0 bytes");
  if (size > pool_size()) {
    return Status::InvalidArgument(
        fmt::format("slot of {} bytes is larger than the whole pool ({} bytes)", size, pool_size()));
  }
  const auto units = static_cast<uint32_t>((size + alignment_ - 1) >> align_shift_);
  const uint32_t id = FindFree(units);
  if (id == kNil) {
    return Status::Full(fmt::format("no free extent of {} bytes ({} of {} bytes in use)", size,
                                    used_units_ << align_shift_, pool_size()));
  }
  RemoveFree(id);
  if (blocks_[id].units > units) {
    // Split: the remainder above becomes its own free block.
    const Block& b = blocks_[id];
    const uint32_t rest = NewRecord({b.start + units, b.units - units, id, b.next_phys, kNil, kNil, BlockState::kFree});
    Block& nb = blocks_[id];  // NewRecord may have reallocated blocks_
    if (nb.next_phys != kNil) blocks_[nb.next_phys].prev_phys = rest;
    nb.next_phys = rest;
    nb.units = units;
    block_at_unit_[blocks_[rest].start] = rest;
    InsertFree(rest);
  }
  Block& b = blocks_[id];
  b.state = BlockState::kUsed;
  used_units_ += b.units;
  ++live_slots_;
  SHMKV_DCHECK(b.next_phys == kNil || blocks_[b.next_phys].start == b.start + b.units);
  return uint64_t{b.start} << align_shift_;
}

Status SlotAllocator::BadOffset(uint64_t offset, std::string_view what) const {
  return Status::InvalidArgument(fmt::format("free of offset {}: {}", offset, what));
}

uint32_t SlotAllocator::LiveSlotAt(uint64_t offset) const {
  if ((offset & (alignment_ - 1)) != 0 || (offset >> align_shift_) >= total_units_) return kNil;
  const uint32_t id = block_at_unit_[offset >> align_shift_];
  return (id != kNil && blocks_[id].state == BlockState::kUsed) ? id : kNil;
}

Status SlotAllocator::Free(uint64_t offset) {
  if ((offset & (alignment_ - 1)) != 0) return BadOffset(offset, "not aligned, so no slot starts there");
  if ((offset >> align_shift_) >= total_units_) {
    return BadOffset(offset, fmt::format("beyond the end of the pool ({} bytes)", pool_size()));
  }
  uint32_t id = block_at_unit_[offset >> align_shift_];
  if (id == kNil) return BadOffset(offset, "no slot starts there (never allocated, or already freed)");
  if (blocks_[id].state == BlockState::kFree)
    return BadOffset(offset, "the extent there is already free (double free)");
  SHMKV_DCHECK(blocks_[id].state == BlockState::kUsed);

  used_units_ -= blocks_[id].units;
  --live_slots_;
  // Coalesce with the free neighbour above, then below.
  if (const uint32_t next = blocks_[id].next_phys; next != kNil && blocks_[next].state == BlockState::kFree) {
    RemoveFree(next);
    Block& b = blocks_[id];
    b.units += blocks_[next].units;
    b.next_phys = blocks_[next].next_phys;
    if (b.next_phys != kNil) blocks_[b.next_phys].prev_phys = id;
    KillRecord(next);
  }
  if (const uint32_t prev = blocks_[id].prev_phys; prev != kNil && blocks_[prev].state == BlockState::kFree) {
    RemoveFree(prev);
    Block& p = blocks_[prev];
    p.units += blocks_[id].units;
    p.next_phys = blocks_[id].next_phys;
    if (p.next_phys != kNil) blocks_[p.next_phys].prev_phys = prev;
    KillRecord(id);
    id = prev;
  }
  InsertFree(id);
  SHMKV_DCHECK(blocks_[id].next_phys == kNil || blocks_[blocks_[id].next_phys].state == BlockState::kUsed);
  SHMKV_DCHECK(blocks_[id].prev_phys == kNil || blocks_[blocks_[id].prev_phys].state == BlockState::kUsed);
  return Status::Ok();
}

Result<uint64_t> SlotAllocator::SlotSize(uint64_t offset) const {
  const uint32_t id = LiveSlotAt(offset);
  if (id == kNil) return Status::InvalidArgument(fmt::format("no live slot starts at offset {}", offset));
  return uint64_t{blocks_[id].units} << align_shift_;
}

SlotAllocatorStats SlotAllocator::stats() const {
  SlotAllocatorStats s;
  s.pool_size = pool_size();
  s.used_bytes = used_units_ << align_shift_;
  s.live_slots = live_slots_;
  s.free_blocks = free_blocks_;
  // The largest free extent lives in the highest non-empty class; scan that one list.
  if (fl_bitmap_ != 0) {
    const int fl = std::bit_width(fl_bitmap_) - 1;
    const int sl = std::bit_width(sl_bitmap_[fl]) - 1;
    uint32_t largest = 0;
    for (uint32_t id = heads_[fl][sl]; id != kNil; id = blocks_[id].next_free) {
      largest = std::max(largest, blocks_[id].units);
    }
    s.largest_free = uint64_t{largest} << align_shift_;
  }
  return s;
}

Status SlotAllocator::CheckInvariants() const {
  auto fail = [](std::string what) { return Status::Internal("slot allocator invariant broken: " + what); };
  // 1. Blocks tile [0, total_units) in address order with consistent links.
  uint32_t id = block_at_unit_.empty() ? kNil : block_at_unit_[0];
  if (id == kNil) return fail("no block starts at unit 0");
  uint64_t expected_start = 0, used = 0, live = 0, free_count = 0, records = 0;
  uint32_t prev = kNil;
  bool prev_free = false;
  while (id != kNil) {
    if (id >= blocks_.size()) return fail(fmt::format("record id {} out of range", id));
    const Block& b = blocks_[id];
    ++records;
    if (records > blocks_.size()) return fail("cycle in the block chain");
    if (b.state == BlockState::kDead) return fail(fmt::format("dead record {} in the block chain", id));
    if (b.start != expected_start) {
      return fail(fmt::format("block at unit {} where unit {} was expected (gap or overlap)", b.start, expected_start));
    }
    if (b.units == 0) return fail(fmt::format("empty block at unit {}", b.start));
    if (b.prev_phys != prev) return fail(fmt::format("block at unit {} has a wrong prev link", b.start));
    if (block_at_unit_[b.start] != id) return fail(fmt::format("unit index of block at {} is wrong", b.start));
    const bool is_free = b.state == BlockState::kFree;
    if (is_free && prev_free) return fail(fmt::format("free blocks touch at unit {} (not coalesced)", b.start));
    if (is_free) {
      ++free_count;
    } else {
      used += b.units;
      ++live;
    }
    // Alignment: every offset handed out is start << align_shift_, within the pool.
    if ((uint64_t{b.start} << align_shift_) % alignment_ != 0) return fail("misaligned block");
    expected_start = uint64_t{b.start} + b.units;
    prev_free = is_free;
    prev = id;
    id = b.next_phys;
  }
  if (expected_start != total_units_) {
    return fail(fmt::format("blocks cover {} units of {}", expected_start, total_units_));
  }
  if (records + dead_records_.size() != blocks_.size()) return fail("records leaked (neither live nor recycled)");
  if (used != used_units_ || live != live_slots_ || free_count != free_blocks_) {
    return fail(fmt::format("counters (used {}, live {}, free {}) disagree with the walk ({}, {}, {})", used_units_,
                            live_slots_, free_blocks_, used, live, free_count));
  }
  // 2. Free lists: right class, consistent links, bitmaps in step.
  uint64_t listed = 0;
  for (int fl = 0; fl < kFlCount; ++fl) {
    if (((fl_bitmap_ >> fl) & 1u) != (sl_bitmap_[fl] != 0 ? 1u : 0u)) {
      return fail(fmt::format("first-level bit {} disagrees with its second level", fl));
    }
    for (int sl = 0; sl < static_cast<int>(kSlCount); ++sl) {
      const uint32_t head = heads_[fl][sl];
      if (((sl_bitmap_[fl] >> sl) & 1u) != (head != kNil ? 1u : 0u)) {
        return fail(fmt::format("bitmap bit ({},{}) disagrees with its list", fl, sl));
      }
      uint32_t back = kNil;
      for (uint32_t f = head; f != kNil; f = blocks_[f].next_free) {
        const Block& b = blocks_[f];
        if (b.state != BlockState::kFree) return fail(fmt::format("non-free block in free list ({},{})", fl, sl));
        int bfl = 0, bsl = 0;
        Mapping(b.units, &bfl, &bsl);
        if (bfl != fl || bsl != sl) return fail(fmt::format("block of {} units filed under ({},{})", b.units, fl, sl));
        if (b.prev_free != back) return fail("broken free-list back link");
        back = f;
        if (++listed > free_blocks_) return fail("free lists hold more blocks than exist");
      }
    }
  }
  if (listed != free_blocks_) return fail(fmt::format("{} free blocks but {} listed", free_blocks_, listed));
  return Status::Ok();
}

}  // namespace shmkv
