#include "producer_memory.h"

#include <arrow/buffer.h>
#include <arrow/ipc/writer.h>
#include <arrow/util/bit_util.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "block_cache.h"
#include "flatbuffer_patch.h"
#include "metadata_template.h"
#include "pages.h"
#include "pool_accounting.h"
#include "ring_queue.h"
#include "shmarrow/error.h"

namespace shmarrow::internal {
namespace {

constexpr int64_t kRingBlocks = 1 << 16;
// Consumers' queues live after the ring's circular part, one fixed slot each; past this many
// bytes in all, the remaining consumers get their batches in messages.
constexpr int64_t kMaxQueueArea = int64_t{16} << 20;
// After the queues: the producer's wait block (futex.h), on a line of its own.
constexpr int64_t kWaitBlockBytes = 64;
constexpr int64_t kSealedCapacity = int64_t{16} << 30;  // virtual; one arena per sealed batch

/// Sealed mode's pool(): allocations go to the arena of the loan in use, and each allocation
/// keeps its loan alive until it is freed. A batch built in pool() may so outlive its
/// publication (the caller keeps it after every consumer released it), a schema change or a
/// failed Publish, and its buffers still free into a live arena. A pool lives as long as its
/// producer (the rule of every arrow::MemoryPool: free its buffers before it dies).
class LoanPool final : public AccountingPool {
 public:
  /// Allocations go to `loan`'s arena from now on (nullptr: allocations fail).
  void Use(std::shared_ptr<Loan> loan) {
    std::shared_ptr<Loan> previous;
    std::lock_guard lock(mutex_);
    previous = std::exchange(current_, std::move(loan));
  }

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override {
    std::lock_guard lock(mutex_);
    if (current_ == nullptr) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                       "no batch is being built: call Producer::pool() again");
    }
    ARROW_RETURN_NOT_OK(current_->writer->pool()->Allocate(size, alignment, out));
    if (size > 0) owners_[*out] = current_;
    DidAllocate(size);
    return arrow::Status::OK();
  }

  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override {
    std::shared_ptr<Loan> owner;
    {
      std::lock_guard lock(mutex_);
      auto it = owners_.find(*ptr);
      if (old_size > 0 && it != owners_.end()) {
        owner = it->second;
        uint8_t* before = *ptr;
        ARROW_RETURN_NOT_OK(owner->writer->pool()->Reallocate(old_size, new_size, alignment, ptr));
        owners_.erase(before);
        if (new_size > 0) owners_[*ptr] = owner;
        DidResize(old_size, new_size);
        return arrow::Status::OK();
      }
    }
    return Allocate(new_size, alignment, ptr);  // from nothing (a zero-size allocation)
  }

  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override {
    std::shared_ptr<Loan> owner;  // destroyed after the lock is released (maybe the arena too)
    std::lock_guard lock(mutex_);
    auto it = owners_.find(buffer);
    if (size == 0 || it == owners_.end()) return;  // a zero-size allocation
    owner = std::move(it->second);
    owners_.erase(it);
    owner->writer->pool()->Free(buffer, size, alignment);
    DidFree(size);
  }

  std::string backend_name() const override { return "shmarrow-sealed-loans"; }

 private:
  std::mutex mutex_;
  std::shared_ptr<Loan> current_;
  std::unordered_map<uint8_t*, std::shared_ptr<Loan>> owners_;
};

/// The metadata placed for `projection` (empty: all columns), or nullptr.
const Placement* FindPlacement(const Published& p, const std::vector<int>& projection) {
  if (projection.empty()) return &p.all_columns;
  for (const auto& [columns, placement] : p.projected) {
    if (columns == projection) return &placement;
  }
  return nullptr;
}

std::shared_ptr<Published> NewRecord(const std::shared_ptr<BlockCache>& cache,
                                     const std::shared_ptr<arrow::RecordBatch>& batch) {
  auto published = std::allocate_shared<Published>(RecyclingAllocator<Published>(cache));
  published->batch = batch;
  return published;
}

class RingMemory final : public ProducerMemory {
 public:
  arrow::Status Init(const ProducerOptions& options) {
    // A queue holds every batch a consumer may hold (at most the producer's credits) and End.
    queue_capacity_ = static_cast<uint32_t>(
        std::clamp<int64_t>(options.max_in_flight, 0, proto::kMaxQueueCapacity - 1) + 1);
    queue_slot_bytes_ = static_cast<int64_t>(proto::QueueBytes(queue_capacity_));
    const int64_t slots = std::clamp<int64_t>(kMaxQueueArea / queue_slot_bytes_, 0,
                                              std::max(options.max_consumers, 0));
    for (int64_t slot = slots - 1; slot >= 0; --slot) {
      free_queue_slots_.push_back(static_cast<int>(slot));
    }
    ARROW_ASSIGN_OR_RAISE(ring_,
                          Ring::Create(options.name, options.ring_size, kRingBlocks,
                                       slots * queue_slot_bytes_ + kWaitBlockBytes, options.pages));
    wait_block_offset_ = static_cast<uint64_t>(ring_->OffsetOf(ring_->reserved())) +
                         static_cast<uint64_t>(slots * queue_slot_bytes_);
    stream_pool_ = std::make_unique<RingPool>(ring_.get(), options.block_timeout_ms);
    nowait_pool_ = std::make_unique<RingPool>(ring_.get(), 0);
    requests_pool_ = std::make_unique<RingPool>(ring_.get(), options.request_timeout_ms);
    return arrow::Status::OK();
  }

  proto::Mode mode() const override { return proto::Mode::kRing; }
  uint64_t ring_size() const override { return static_cast<uint64_t>(ring_->size()); }
  int64_t page_size() const override { return ring_->page_size(); }
  int64_t bytes_in_use() const override { return ring_->bytes_in_use(); }
  arrow::Result<UniqueFd> ConsumerFd() const override { return ring_->ConsumerFd(); }

  arrow::MemoryPool* StreamPool(const std::shared_ptr<arrow::Schema>&) override {
    return stream_pool_.get();
  }
  arrow::MemoryPool* FixedStreamPool() override { return stream_pool_.get(); }
  std::shared_ptr<Loan> TakeStreamLoan() override { return nullptr; }
  void ForgetStreamLoan() override {}

  arrow::Result<std::shared_ptr<Published>> PrepareForStream(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan>,
      std::vector<std::vector<int>> projections) override {
    return Prepare(batch, std::move(projections), stream_pool_.get(), &stream_metadata_);
  }

  /// Builds in the ring, waiting for room no longer than a request may take.
  class Handler final : public HandlerMemory {
   public:
    explicit Handler(RingMemory* memory) : memory_(memory) {}
    arrow::MemoryPool* pool(const std::shared_ptr<arrow::Schema>&) override {
      return memory_->requests_pool_.get();
    }
    arrow::Result<std::shared_ptr<Published>> Prepare(
        const std::shared_ptr<arrow::RecordBatch>& batch) override {
      return memory_->Prepare(batch, {}, memory_->requests_pool_.get(), nullptr);
    }

   private:
    RingMemory* memory_;
  };
  std::unique_ptr<HandlerMemory> ForHandler() override { return std::make_unique<Handler>(this); }

  arrow::Result<std::optional<RingLocation>> Locate(Published& p,
                                                    const std::vector<int>& projection) override {
    if (const Placement* placed = FindPlacement(p, projection)) return placed->location;
    // A projection first seen after the batch was prepared (a late joiner): placed now, without
    // waiting, since the producer's mutex is held.
    ARROW_ASSIGN_OR_RAISE(auto placement, PlaceInRing(p, projection, nowait_pool_.get(), nullptr));
    const RingLocation location = placement.location;
    p.projected.emplace_back(projection, std::move(placement));
    return location;
  }

  std::optional<QueueSlot> AcquireQueue() override {
    if (free_queue_slots_.empty()) return std::nullopt;
    QueueSlot slot;
    slot.index = free_queue_slots_.back();
    free_queue_slots_.pop_back();
    slot.address = ring_->reserved() + slot.index * queue_slot_bytes_;
    slot.offset = static_cast<uint64_t>(ring_->OffsetOf(slot.address));
    return slot;
  }
  void ReleaseQueue(int index) override { free_queue_slots_.push_back(index); }
  uint32_t* wait_block() override {
    return reinterpret_cast<uint32_t*>(ring_->base() + wait_block_offset_);
  }
  uint64_t wait_block_offset() const override { return wait_block_offset_; }
  void SetWaitHook(Ring::WaitHook hook) override { ring_->SetWaitHook(std::move(hook)); }
  bool queue_free() const override { return !free_queue_slots_.empty(); }
  uint32_t queue_capacity() const override { return queue_capacity_; }

  void Close() override { ring_->Close(); }

 private:
  arrow::Result<std::shared_ptr<Published>> Prepare(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::vector<std::vector<int>> projections,
      RingPool* pool, MetadataCache* cache) {
    auto published = NewRecord(block_cache_, batch);
    ARROW_ASSIGN_OR_RAISE(published->all_columns, PlaceInRing(*published, {}, pool, cache));
    for (auto& projection : projections) {
      if (FindPlacement(*published, projection) != nullptr) continue;
      ARROW_ASSIGN_OR_RAISE(auto placement, PlaceInRing(*published, projection, pool, nullptr));
      published->projected.emplace_back(std::move(projection), std::move(placement));
    }
    return published;
  }

  /// Writes the batch's (projected) Message into the ring, pointing at its buffers there. With
  /// `cache` (all columns of a stream batch), a batch of the layout it holds gets a patched copy
  /// of its Message; any other is described by Arrow's writer (and offered to `cache`).
  arrow::Result<Placement> PlaceInRing(Published& p, const std::vector<int>& projection,
                                       RingPool* pool, MetadataCache* cache) {
    // Reused: this runs for every batch, on the publishing thread or a request handler's.
    thread_local BodyList body;
    thread_local std::vector<int64_t> offsets;
    thread_local std::vector<uint8_t> message;
    const bool listed = cache != nullptr && ListBody(*p.batch, &body);
    if (listed) {
      const int64_t message_size = cache->MessageSize(*p.batch, body);
      if (message_size >= 0) {
        const int64_t copied_before = p.bytes_copied;
        ARROW_ASSIGN_OR_RAISE(auto placement,
                              PlaceWithCopies(p, message_size, body, pool, &offsets));
        if (cache->Write(*p.batch, body, offsets, ring_->size(), &message) &&
            static_cast<int64_t>(message.size()) == message_size) {
          std::memcpy(placement.metadata.data(), message.data(), message.size());
          return placement;
        }
        // Another thread replaced the cached Message meanwhile: Arrow's writer, from the start
        // (the block goes back to the ring with `placement`).
        p.bytes_copied = copied_before;
      }
    }
    std::shared_ptr<arrow::RecordBatch> target = p.batch;
    if (!projection.empty()) {
      ARROW_ASSIGN_OR_RAISE(target, p.batch->SelectColumns(projection));
    }
    arrow::ipc::IpcPayload payload;
    ARROW_RETURN_NOT_OK(arrow::ipc::GetRecordBatchPayload(
        *target, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
    if (listed) cache->Remember(*p.batch, body, *payload.metadata);
    thread_local std::vector<const uint8_t*> data;
    thread_local std::vector<int64_t> lengths;
    data.clear();
    lengths.clear();
    for (const auto& buffer : payload.body_buffers) {
      const int64_t length = buffer == nullptr ? 0 : buffer->size();
      data.push_back(length == 0 ? nullptr : buffer->data());
      lengths.push_back(length);
    }
    ARROW_RETURN_NOT_OK(PlaceBuffers(p, data, lengths, pool, &offsets));
    ARROW_ASSIGN_OR_RAISE(auto placement,
                          PlaceMetadata(payload.metadata->data(), payload.metadata->size(), pool));
    uint8_t* metadata = placement.metadata.data();
    // Offsets count from byte 0 of the ring: the consumer reads the whole ring as the body.
    ARROW_ASSIGN_OR_RAISE(
        auto fields, RewriteBufferOffsets(metadata, placement.metadata.size(), offsets, lengths));
    SetBodyLength(metadata, fields, ring_->size());
    return placement;
  }

  /// A buffer consumers can read where it is: empty, or in the ring and 8-byte aligned there.
  bool InPlace(const uint8_t* data, int64_t length) const {
    return length == 0 || (ring_->Contains(data, length) && ring_->OffsetOf(data) % 8 == 0);
  }

  /// Sets `offsets` to where each buffer lies in the ring, copying those not in place into
  /// `pool`.
  arrow::Status PlaceBuffers(Published& p, const std::vector<const uint8_t*>& data,
                             const std::vector<int64_t>& lengths, RingPool* pool,
                             std::vector<int64_t>* offsets) {
    offsets->assign(data.size(), 0);
    for (size_t i = 0; i < data.size(); ++i) {
      if (lengths[i] == 0) continue;
      if (InPlace(data[i], lengths[i])) {
        (*offsets)[i] = ring_->OffsetOf(data[i]);
        continue;
      }
      ARROW_ASSIGN_OR_RAISE(std::shared_ptr<arrow::Buffer> copy,
                            arrow::AllocateBuffer(lengths[i], pool));
      std::memcpy(copy->mutable_data(), data[i], static_cast<size_t>(lengths[i]));
      (*offsets)[i] = ring_->OffsetOf(copy->data());
      p.copies.push_back(std::move(copy));
      p.bytes_copied += lengths[i];
    }
    return arrow::Status::OK();
  }

  /// One ring block for a Message of `message_size` bytes (at its start; written by the caller)
  /// and copies of the buffers of `body` that are not in place, each 64-byte aligned after it:
  /// one allocation, however many buffers are copied. Sets `offsets` to where each buffer lies.
  arrow::Result<Placement> PlaceWithCopies(Published& p, int64_t message_size, const BodyList& body,
                                           RingPool* pool, std::vector<int64_t>* offsets) {
    const size_t count = body.buffer_data.size();
    int64_t size = arrow::bit_util::RoundUpToMultipleOf64(message_size);
    for (size_t i = 0; i < count; ++i) {
      if (!InPlace(body.buffer_data[i], body.buffer_lengths[i])) {
        size += arrow::bit_util::RoundUpToMultipleOf64(body.buffer_lengths[i]);
      }
    }
    Placement placement;
    ARROW_ASSIGN_OR_RAISE(placement.metadata, RingBlock::Allocate(pool, size));
    uint8_t* block = placement.metadata.data();
    placement.location = {ring_->OffsetOf(block), message_size};
    int64_t at = arrow::bit_util::RoundUpToMultipleOf64(message_size);
    offsets->assign(count, 0);
    for (size_t i = 0; i < count; ++i) {
      const uint8_t* data = body.buffer_data[i];
      const int64_t length = body.buffer_lengths[i];
      if (InPlace(data, length)) {
        if (length > 0) (*offsets)[i] = ring_->OffsetOf(data);
        continue;
      }
      std::memcpy(block + at, data, static_cast<size_t>(length));
      (*offsets)[i] = ring_->OffsetOf(block + at);
      p.bytes_copied += length;
      at += arrow::bit_util::RoundUpToMultipleOf64(length);
    }
    return placement;
  }

  /// Copies a Message flatbuffer into a ring block of its own.
  arrow::Result<Placement> PlaceMetadata(const uint8_t* flatbuffer, int64_t size, RingPool* pool) {
    Placement placement;
    ARROW_ASSIGN_OR_RAISE(placement.metadata, RingBlock::Allocate(pool, size));
    std::memcpy(placement.metadata.data(), flatbuffer, static_cast<size_t>(size));
    placement.location = {ring_->OffsetOf(placement.metadata.data()), placement.metadata.size()};
    return placement;
  }

  // Destroyed last: the pools allocate in the ring.
  std::unique_ptr<Ring> ring_;
  std::unique_ptr<RingPool> stream_pool_;    // waits per block_timeout_ms
  std::unique_ptr<RingPool> nowait_pool_;    // for work under the producer's mutex
  std::unique_ptr<RingPool> requests_pool_;  // waits per request_timeout_ms
  // The Message of the published stream's layout, patched for each of its batches (request
  // handlers' answers, of any schema, go through Arrow's writer).
  MetadataCache stream_metadata_;
  // Published records are made per batch: their memory is reused.
  const std::shared_ptr<BlockCache> block_cache_ = std::make_shared<BlockCache>();
  // The consumers' queue slots in the ring's reserved part.
  uint32_t queue_capacity_ = 0;
  int64_t queue_slot_bytes_ = 0;
  uint64_t wait_block_offset_ = 0;
  std::vector<int> free_queue_slots_;
};

class SealedMemory final : public ProducerMemory {
 public:
  arrow::Status Init(const ProducerOptions& options) {
    name_ = options.name;
    pages_ = options.pages;
    ARROW_ASSIGN_OR_RAISE(page_size_, ProbePageSize(options.name, options.pages));
    return arrow::Status::OK();
  }

  proto::Mode mode() const override { return proto::Mode::kSealed; }
  uint64_t ring_size() const override { return 0; }
  int64_t page_size() const override { return page_size_; }
  int64_t bytes_in_use() const override { return 0; }
  arrow::Result<UniqueFd> ConsumerFd() const override { return UniqueFd(); }

  arrow::MemoryPool* StreamPool(const std::shared_ptr<arrow::Schema>& schema) override {
    if (loan_ == nullptr) {
      auto loan = NewLoan(schema);
      // Without a fresh memfd the batch is built on the heap; Publish then copies it in once.
      if (!loan.ok()) return arrow::default_memory_pool();
      loan_ = std::move(*loan);
      stream_lane_.Use(loan_);
    }
    return &stream_lane_;
  }
  std::shared_ptr<Loan> TakeStreamLoan() override {
    // The lane stops pointing at this arena (allocations in it keep it alive): once the batch
    // is released everywhere its memory returns, without waiting for the next pool() call.
    stream_lane_.Use(nullptr);
    return std::move(loan_);
  }
  void ForgetStreamLoan() override { loan_.reset(); }

  arrow::Result<std::shared_ptr<Published>> PrepareForStream(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan> loan,
      std::vector<std::vector<int>>) override {
    return Prepare(batch, std::move(loan));
  }

  /// Builds in arenas of its own, through a lane (a LoanPool) borrowed while it lives.
  class Handler final : public HandlerMemory {
   public:
    explicit Handler(SealedMemory* memory) : memory_(memory) {}
    ~Handler() override {
      if (lane_ != nullptr) memory_->ReleaseLane(lane_);
    }
    arrow::MemoryPool* pool(const std::shared_ptr<arrow::Schema>& schema) override {
      if (loan_ == nullptr) {
        auto loan = memory_->NewLoan(schema);
        if (!loan.ok()) return arrow::default_memory_pool();  // copied in at Prepare
        loan_ = std::move(*loan);
        if (lane_ == nullptr) lane_ = memory_->AcquireLane();
        lane_->Use(loan_);
      }
      return lane_;
    }
    arrow::Result<std::shared_ptr<Published>> Prepare(
        const std::shared_ptr<arrow::RecordBatch>& batch) override {
      return memory_->Prepare(batch, std::move(loan_));
    }

   private:
    SealedMemory* memory_;
    std::shared_ptr<Loan> loan_;
    LoanPool* lane_ = nullptr;
  };
  std::unique_ptr<HandlerMemory> ForHandler() override { return std::make_unique<Handler>(this); }

  arrow::Result<std::optional<RingLocation>> Locate(Published&, const std::vector<int>&) override {
    return std::nullopt;
  }

  std::optional<QueueSlot> AcquireQueue() override { return std::nullopt; }
  void ReleaseQueue(int) override {}
  bool queue_free() const override { return false; }
  uint32_t queue_capacity() const override { return 0; }

  void Close() override {}

 private:
  arrow::Result<std::shared_ptr<Loan>> NewLoan(const std::shared_ptr<arrow::Schema>& schema) {
    WriterOptions writer_options;
    writer_options.capacity = kSealedCapacity;
    writer_options.name = name_;
    writer_options.pages = pages_;
    ARROW_ASSIGN_OR_RAISE(auto writer, SharedStreamWriter::Open(schema, writer_options));
    return std::make_shared<Loan>(std::move(writer));
  }

  /// Writes the batch to `loan`'s arena (a fresh one where it has none or another schema) and
  /// seals it.
  arrow::Result<std::shared_ptr<Published>> Prepare(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan> loan) {
    auto published = NewRecord(block_cache_, batch);
    if (loan == nullptr || !loan->writer->schema()->Equals(*batch->schema())) {
      // Written to a fresh arena (copied in); the batch's buffers keep theirs alive.
      ARROW_ASSIGN_OR_RAISE(loan, NewLoan(batch->schema()));
    }
    SharedStreamWriter& writer = *loan->writer;
    ARROW_RETURN_NOT_OK(writer.WriteRecordBatch(*batch));
    ARROW_ASSIGN_OR_RAISE(auto sealed, writer.Finish());
    published->memfd = std::move(sealed.fd);
    published->bytes_copied = writer.stats().bytes_copied;
    published->loan = std::move(loan);
    return published;
  }

  LoanPool* AcquireLane() {
    std::lock_guard lock(lanes_mutex_);
    if (free_lanes_.empty()) {
      lanes_.push_back(std::make_unique<LoanPool>());
      free_lanes_.push_back(lanes_.back().get());
    }
    LoanPool* lane = free_lanes_.back();
    free_lanes_.pop_back();
    return lane;
  }

  void ReleaseLane(LoanPool* lane) {
    lane->Use(nullptr);
    std::lock_guard lock(lanes_mutex_);
    free_lanes_.push_back(lane);
  }

  std::string name_;
  PagePolicy pages_ = PagePolicy::kAuto;
  int64_t page_size_ = 0;
  // The pools, destroyed after the loan below (batches built in them may be held anywhere): the
  // published stream's, and those lent to request handlers.
  LoanPool stream_lane_;
  std::mutex lanes_mutex_;
  std::vector<std::unique_ptr<LoanPool>> lanes_;
  std::vector<LoanPool*> free_lanes_;
  std::shared_ptr<Loan> loan_;  // where StreamPool builds the next batch
  const std::shared_ptr<BlockCache> block_cache_ = std::make_shared<BlockCache>();
};

}  // namespace

arrow::Result<std::unique_ptr<ProducerMemory>> ProducerMemory::Create(
    const ProducerOptions& options) {
  if (options.mode == MemoryMode::kRing) {
    auto memory = std::make_unique<RingMemory>();
    ARROW_RETURN_NOT_OK(memory->Init(options));
    return memory;
  }
  auto memory = std::make_unique<SealedMemory>();
  ARROW_RETURN_NOT_OK(memory->Init(options));
  return memory;
}

}  // namespace shmarrow::internal
