// shmarrow._native._Producer and _Allocation: shmarrow::Producer for Python.
//
// Batches come in as the C++ batch a pyarrow.RecordBatch wraps (pyarrow's C API; other libraries'
// batches become pyarrow's through the Arrow PyCapsule interface first), so their buffers are
// wherever the Python objects keep them. Memory from allocate() is taken from the producer's pool() (the ring,
// or in sealed mode the arena of the next batch, which each allocation keeps alive until freed):
// a batch whose buffers lie there is published without a copy. Before publishing, such buffers are
// swapped for slices of the allocation's own buffer, so that the published batch pins the shared
// memory itself, not the Python objects over it (releasing it then needs no GIL).
//
// Producer.memory_pool is an arrow::MemoryPool over pool() handed to pyarrow as a
// pyarrow.MemoryPool by pyarrow's own C API (box_memory_pool, exported by pyarrow.lib through
// Cython's __pyx_capi__ and declared in the wheel's arrow/python/lib_api.h).
#include <arrow/array/data.h>
#include <arrow/buffer.h>
#include <arrow/memory_pool.h>
#include <arrow/sparse_tensor.h>  // declarations lib_api.h assumes
#include <arrow/python/lib_api.h>
#include <arrow/type.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "bindings.h"
#include "common.h"
#include "pool_accounting.h"
#include "shmarrow/producer.h"

namespace shmarrow::python {
namespace {

constexpr int64_t kAlignment = 64;

/// Memory taken from the producer's pool() for the caller to fill. Freed into the pool when the
/// last reference dies: the Python object, or a published batch that a consumer still holds.
class AllocationBuffer final : public arrow::MutableBuffer {
 public:
  AllocationBuffer(uint8_t* data, int64_t size, arrow::MemoryPool* pool)
      : arrow::MutableBuffer(data, size), pool_(pool) {}
  ~AllocationBuffer() override { pool_->Free(const_cast<uint8_t*>(data_), size_, kAlignment); }

 private:
  arrow::MemoryPool* pool_;  // the producer's: it outlives every buffer (see AllocationState)
};

struct ProducerState;

struct AllocationState {
  std::shared_ptr<ProducerState> owner;  // keeps the producer (its ring, its pools) alive
  std::shared_ptr<AllocationBuffer> buffer;
};

struct ProducerState {
  std::shared_ptr<Producer> producer;  // kept after close(): allocations may point into its ring
  bool ring = true;
  std::string address;

  // The live allocations, by address, to find the allocation a buffer lies in.
  std::mutex mutex;
  bool closed = false;
  std::map<uintptr_t, std::weak_ptr<AllocationState>> allocations;
  size_t prune_at = 64;

  ~ProducerState() { Close(); }

  void Close() {
    if (producer == nullptr) return;
    {
      std::lock_guard lock(mutex);
      if (closed) return;
      closed = true;
    }
    producer->Close();
    producer->SetRequestHandler(nullptr);  // drops the Python callable (takes the GIL)
  }

  void PruneLocked() {
    std::erase_if(allocations, [](const auto& entry) { return entry.second.expired(); });
  }

  /// The live allocation holding [address, address + size), if any. Under `mutex`.
  std::shared_ptr<AllocationState> FindLocked(const uint8_t* address, int64_t size) {
    const auto at = reinterpret_cast<uintptr_t>(address);
    std::shared_ptr<AllocationState> allocation;
    while (allocation == nullptr) {
      auto it = allocations.upper_bound(at);
      if (it == allocations.begin()) return nullptr;
      --it;
      allocation = it->second.lock();
      if (allocation == nullptr) allocations.erase(it);  // a dead one may hide a live one below
    }
    const auto start = reinterpret_cast<uintptr_t>(allocation->buffer->data());
    if (at < start || at + static_cast<uintptr_t>(size) >
                          start + static_cast<uintptr_t>(allocation->buffer->size())) {
      return nullptr;
    }
    return allocation;
  }

  /// `data` with every buffer lying in an allocation replaced by (a slice of) that allocation's
  /// buffer. Under `mutex`.
  std::shared_ptr<arrow::ArrayData> SubstituteLocked(
      const std::shared_ptr<arrow::ArrayData>& data) {
    std::shared_ptr<arrow::ArrayData> out;
    auto copy = [&] {
      if (out == nullptr) out = std::make_shared<arrow::ArrayData>(*data);
    };
    for (size_t i = 0; i < data->buffers.size(); ++i) {
      const auto& buffer = data->buffers[i];
      if (buffer == nullptr || buffer->size() == 0 || !buffer->is_cpu()) continue;
      auto allocation = FindLocked(buffer->data(), buffer->size());
      if (allocation == nullptr) continue;
      const auto& whole = allocation->buffer;
      std::shared_ptr<arrow::Buffer> replacement = whole;
      if (buffer->data() != whole->data() || buffer->size() != whole->size()) {
        replacement =
            arrow::SliceMutableBuffer(whole, buffer->data() - whole->data(), buffer->size());
      }
      copy();
      out->buffers[i] = std::move(replacement);
    }
    for (size_t i = 0; i < data->child_data.size(); ++i) {
      auto child = SubstituteLocked(data->child_data[i]);
      if (child != data->child_data[i]) {
        copy();
        out->child_data[i] = std::move(child);
      }
    }
    if (data->dictionary != nullptr) {
      auto dictionary = SubstituteLocked(data->dictionary);
      if (dictionary != data->dictionary) {
        copy();
        out->dictionary = std::move(dictionary);
      }
    }
    return out != nullptr ? out : data;
  }

  std::shared_ptr<arrow::RecordBatch> SubstituteLocked(
      const std::shared_ptr<arrow::RecordBatch>& batch) {
    if (allocations.empty()) return batch;
    bool changed = false;
    std::vector<std::shared_ptr<arrow::ArrayData>> columns;
    columns.reserve(static_cast<size_t>(batch->num_columns()));
    for (int i = 0; i < batch->num_columns(); ++i) {
      const auto& original = batch->column_data(i);
      columns.push_back(SubstituteLocked(original));
      changed = changed || columns.back() != original;
    }
    if (!changed) return batch;
    return arrow::RecordBatch::Make(batch->schema(), batch->num_rows(), std::move(columns));
  }

  /// Publishes with the GIL released.
  arrow::Status Publish(const std::shared_ptr<arrow::RecordBatch>& batch) {
    std::shared_ptr<arrow::RecordBatch> published;
    {
      std::lock_guard lock(mutex);
      if (closed) return arrow::Status::Cancelled("the producer is closed");
      published = SubstituteLocked(batch);
    }
    return producer->Publish(published);
  }
};

/// The pool behind Producer.memory_pool. A pyarrow.MemoryPool holds a raw pointer to it and every
/// buffer allocated from it frees into it, so it counts those references (the Python object and
/// each live allocation) and deletes itself after the last; meanwhile it keeps the producer alive.
/// Each allocation goes to the producer's pool() of that moment (sealed mode: the arena of the
/// next batch) and frees into the pool it came from.
class SharedMemoryPool final : public shmarrow::internal::AccountingPool {
 public:
  explicit SharedMemoryPool(std::shared_ptr<ProducerState> owner) : owner_(std::move(owner)) {}

  /// The Python object is gone.
  void ReleasePythonReference() { Unref(); }

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override {
    {
      std::lock_guard lock(owner_->mutex);
      if (owner_->closed) {
        return arrow::Status::Invalid("the producer at ", owner_->address,
                                      " is closed: its memory_pool allocates nothing more");
      }
    }
    // Unlocked: a full ring blocks here (block_timeout) while others publish.
    arrow::MemoryPool* pool = owner_->producer->pool();
    ARROW_RETURN_NOT_OK(pool->Allocate(size, alignment, out));
    refs_.fetch_add(1);
    std::lock_guard lock(mutex_);
    if (size > 0) sources_[*out] = pool;
    DidAllocate(size);
    return arrow::Status::OK();
  }

  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override {
    arrow::MemoryPool* pool = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (auto it = sources_.find(*ptr); old_size > 0 && it != sources_.end()) pool = it->second;
    }
    if (pool == nullptr) {  // a zero-size allocation: any of the pools' zero-size areas
      uint8_t* grown = nullptr;
      ARROW_RETURN_NOT_OK(Allocate(new_size, alignment, &grown));
      refs_.fetch_sub(1);  // still the one allocation
      *ptr = grown;
      return arrow::Status::OK();
    }
    uint8_t* before = *ptr;
    ARROW_RETURN_NOT_OK(pool->Reallocate(old_size, new_size, alignment, ptr));
    std::lock_guard lock(mutex_);
    sources_.erase(before);
    if (new_size > 0) sources_[*ptr] = pool;
    DidResize(old_size, new_size);
    return arrow::Status::OK();
  }

  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override {
    arrow::MemoryPool* pool = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (auto it = sources_.find(buffer); size > 0 && it != sources_.end()) {
        pool = it->second;
        sources_.erase(it);
        DidFree(size);
      }
    }
    if (pool != nullptr) pool->Free(buffer, size, alignment);
    Unref();
  }

  std::string backend_name() const override {
    return owner_->ring ? "shmarrow-ring" : "shmarrow-sealed";
  }

 private:
  ~SharedMemoryPool() override {
    // The producer may close here, joining threads that may be waiting for the GIL.
    if (Py_IsInitialized() && PyGILState_Check()) {
      ReleaseGil release;
      owner_.reset();
    }
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  std::shared_ptr<ProducerState> owner_;
  std::atomic<int64_t> refs_{1};  // the Python object's
  std::mutex mutex_;
  std::unordered_map<uint8_t*, arrow::MemoryPool*> sources_;  // allocation -> the pool it is from
};

/// A pyarrow.MemoryPool over a new SharedMemoryPool of `owner`.
nb::object BoxMemoryPool(std::shared_ptr<ProducerState> owner) {
  if (box_memory_pool == nullptr && import_pyarrow__lib() != 0) throw nb::python_error();
  auto* pool = new SharedMemoryPool(std::move(owner));
  PyObject* boxed = box_memory_pool(pool);
  if (boxed == nullptr) {
    pool->ReleasePythonReference();
    throw nb::python_error();
  }
  nb::object result = nb::steal(boxed);
  // The pyarrow object cannot own the pool: a finalizer gives up its reference when it dies.
  nb::module_::import_("weakref").attr("finalize")(result, nb::cpp_function([pool] {
                                                     ReleaseGil release;
                                                     pool->ReleasePythonReference();
                                                   }));
  return result;
}

class PyAllocation {
 public:
  explicit PyAllocation(std::shared_ptr<AllocationState> state) : state_(std::move(state)) {}
  ~PyAllocation() {
    ReleaseGil release;  // freeing may close the producer or release Python buffers
    state_.reset();
  }
  const std::shared_ptr<AllocationState>& state() const { return state_; }
  uintptr_t address() const { return reinterpret_cast<uintptr_t>(state_->buffer->data()); }
  int64_t size() const { return state_->buffer->size(); }

 private:
  std::shared_ptr<AllocationState> state_;
};

int AllocationGetBuffer(PyObject* self, Py_buffer* view, int flags) {
  auto* allocation = nb::inst_ptr<PyAllocation>(self);
  if (!nb::inst_ready(self) || allocation->state() == nullptr) {
    PyErr_SetString(PyExc_BufferError, "uninitialized shmarrow.Allocation");
    view->obj = nullptr;
    return -1;
  }
  const auto& buffer = allocation->state()->buffer;
  return PyBuffer_FillInfo(view, self, buffer->mutable_data(), buffer->size(), /*readonly=*/0,
                           flags);
}

PyType_Slot allocation_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(AllocationGetBuffer)},
    {0, nullptr},
};

/// Drops a Python reference from any thread (the request handler is copied onto the producer's
/// threads); leaks it when the interpreter is already gone.
void DecrefWithGil(PyObject* object) {
  if (!Py_IsInitialized()) return;
  const PyGILState_STATE gil = EnsureGil();
  Py_DECREF(object);
  PyGILState_Release(gil);
}

class PyProducer {
 public:
  PyProducer(const std::string& address, std::shared_ptr<arrow::Schema> schema,
             const ProducerOptions& options)
      : state_(std::make_shared<ProducerState>()) {
    state_->ring = options.mode == MemoryMode::kRing;
    state_->address = address;
    arrow::Result<std::shared_ptr<Producer>> listening;
    {
      ReleaseGil release;
      listening = Producer::Listen(address, std::move(schema), options);
    }
    state_->producer = ValueOrThrow(std::move(listening), "listen");
  }

  ~PyProducer() {
    ReleaseGil release;  // closing joins the producer's threads
    state_.reset();
  }

  /// A pyarrow.RecordBatch, published as the C++ batch it wraps.
  void PublishPyarrowBatch(nb::handle object) {
    auto batch = UnwrapBatch(object);
    if (batch == nullptr) {
      ThrowError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                 "publish_pyarrow_batch takes a pyarrow.RecordBatch", "publish");
    }
    PublishImported(std::move(batch));
  }

  int64_t PublishStream(nb::handle stream_capsule) {
    auto reader = ImportStreamCapsule(stream_capsule);
    arrow::Status status;
    int64_t count = 0;
    {
      ReleaseGil release;
      for (;;) {
        std::shared_ptr<arrow::RecordBatch> batch;
        status = reader->ReadNext(&batch);
        if (!status.ok() || batch == nullptr) break;
        status = state_->Publish(batch);
        if (!status.ok()) break;
        ++count;
      }
      reader.reset();
    }
    CheckOk(status, "publish");
    return count;
  }

  PyAllocation Allocate(int64_t size) {
    if (size < 0) {
      ThrowError(arrow::StatusCode::Invalid, ErrorCode::kBadInput, "allocate() needs a size >= 0",
                 "allocate");
    }
    auto allocation = std::make_shared<AllocationState>();
    allocation->owner = state_;
    arrow::Status status;
    {
      ReleaseGil release;
      status = AllocateInto(allocation, size);
    }
    CheckOk(status, "allocate");
    return PyAllocation(std::move(allocation));
  }

  nb::object MemoryPool() { return BoxMemoryPool(state_); }

  void ChangeSchema(nb::handle schema_capsule) {
    auto schema = ImportSchemaCapsule(schema_capsule);
    arrow::Status status;
    {
      ReleaseGil release;
      status = state_->producer->ChangeSchema(std::move(schema));
    }
    CheckOk(status, "change_schema");
  }

  void End() {
    arrow::Status status;
    {
      ReleaseGil release;
      status = state_->producer->End();
    }
    CheckOk(status, "end");
  }

  void SetRequestHandler(nb::object handler) {
    RequestHandler wrapped;
    if (!handler.is_none()) {
      std::shared_ptr<PyObject> callable(handler.release().ptr(), DecrefWithGil);
      wrapped = [callable](std::string_view request, ResponseWriter& response) {
        return Answer(callable.get(), request, response);
      };
    }
    ReleaseGil release;
    state_->producer->SetRequestHandler(std::move(wrapped));
  }

  void WaitForConsumers(int count, int64_t timeout_ms) {
    Wait(
        timeout_ms, [&](int slice) { return state_->producer->WaitForConsumers(count, slice); },
        [&] {
          return "timed out after " + std::to_string(timeout_ms) + " ms waiting for " +
                 std::to_string(count) + " consumer(s) (" +
                 std::to_string(state_->producer->stats().consumers) + " attached)";
        });
  }

  void WaitUntilDrained(int64_t timeout_ms) {
    Wait(
        timeout_ms, [&](int slice) { return state_->producer->WaitUntilDrained(slice); },
        [&] {
          return "timed out after " + std::to_string(timeout_ms) + " ms waiting for consumers to " +
                 "release " + std::to_string(state_->producer->stats().in_flight) +
                 " batch(es) in flight";
        });
  }

  nb::dict Stats() {
    ProducerStats stats;
    {
      ReleaseGil release;
      stats = state_->producer->stats();
    }
    nb::dict out;
    out["published"] = stats.published;
    out["bytes_copied"] = stats.bytes_copied;
    out["consumers"] = stats.consumers;
    out["consumers_total"] = stats.consumers_total;
    out["consumers_refused"] = stats.consumers_refused;
    out["dropped"] = stats.dropped;
    out["in_flight"] = stats.in_flight;
    out["ring_bytes_in_use"] = stats.ring_bytes_in_use;
    out["page_size"] = stats.page_size;
    return out;
  }

  nb::object Schema() {
    std::shared_ptr<arrow::Schema> schema;
    {
      ReleaseGil release;
      schema = state_->producer->schema();
    }
    return SchemaCapsule(*schema);
  }

  std::string mode() const { return state_->ring ? "ring" : "sealed"; }
  const std::string& address() const { return state_->address; }

  bool closed() {
    ReleaseGil release;
    std::lock_guard lock(state_->mutex);
    return state_->closed;
  }

  void Close() {
    ReleaseGil release;
    state_->Close();
  }

 private:
  /// Publishes with the GIL released.
  void PublishImported(std::shared_ptr<arrow::RecordBatch> batch) {
    arrow::Status status;
    {
      ReleaseGil release;
      status = state_->Publish(batch);
      batch.reset();
    }
    CheckOk(status, "publish");
  }

  arrow::Status AllocateInto(const std::shared_ptr<AllocationState>& allocation, int64_t size) {
    auto& state = *state_;
    {
      std::lock_guard lock(state.mutex);
      if (state.closed) return arrow::Status::Cancelled("the producer is closed");
    }
    // Unlocked: a full ring blocks here (block_timeout) while others publish.
    arrow::MemoryPool* pool = state.producer->pool();  // sealed: the next batch's arena, each time
    uint8_t* data = nullptr;
    ARROW_RETURN_NOT_OK(pool->Allocate(size, kAlignment, &data));
    std::lock_guard lock(state.mutex);
    allocation->buffer = std::make_shared<AllocationBuffer>(data, size, pool);
    if (size > 0) {
      if (state.allocations.size() >= state.prune_at) {  // forget dead entries now and then
        state.PruneLocked();
        state.prune_at = std::max<size_t>(64, 2 * state.allocations.size());
      }
      state.allocations[reinterpret_cast<uintptr_t>(data)] = allocation;
    }
    return arrow::Status::OK();
  }

  template <typename Call, typename Message>
  void Wait(int64_t timeout_ms, Call&& call, Message&& message) {
    arrow::Status status;
    const bool done = RepeatInterruptibly(Deadline(timeout_ms), [&](int slice) {
      status = call(slice);
      return status.ok() || !status.IsIOError();  // IOError: not within the slice
    });
    if (!done) {
      std::string text;
      {
        ReleaseGil release;
        text = message();
      }
      ThrowError(arrow::StatusCode::IOError, ErrorCode::kTimeout, text, "wait");
    }
    CheckOk(status, "wait");  // closed, ...
  }

  /// Runs on the producer's request thread: calls the Python handler (it returns an
  /// ArrowArrayStream capsule, or None for an empty answer) and writes what it yields.
  static arrow::Status Answer(PyObject* callable, std::string_view request,
                              ResponseWriter& response) {
    if (!Py_IsInitialized()) return arrow::Status::Cancelled("Python is shutting down");
    std::shared_ptr<arrow::RecordBatchReader> reader;
    arrow::Status status;
    const PyGILState_STATE gil = EnsureGil();
    try {
      nb::object answer = nb::handle(callable)(nb::bytes(request.data(), request.size()));
      if (!answer.is_none()) reader = ImportStreamCapsule(answer);
    } catch (nb::python_error& error) {
      status = arrow::Status::Invalid(nb::str(error.type().attr("__name__")).c_str(), ": ",
                                      nb::str(error.value()).c_str());
    } catch (const std::exception& error) {
      status = arrow::Status::Invalid(error.what());
    }
    PyGILState_Release(gil);
    if (!status.ok() || reader == nullptr) return status;
    for (;;) {
      std::shared_ptr<arrow::RecordBatch> batch;
      ARROW_RETURN_NOT_OK(reader->ReadNext(&batch));
      if (batch == nullptr) return arrow::Status::OK();
      ARROW_RETURN_NOT_OK(response.Write(batch));
    }
  }

  std::shared_ptr<ProducerState> state_;
};

}  // namespace

void BindProducer(nb::module_& m) {
  nb::class_<PyAllocation>(m, "Allocation", nb::type_slots(allocation_slots),
                           R"(Shared memory from Producer.allocate(), writable through the buffer
protocol: numpy.frombuffer(allocation, dtype) and pyarrow.py_buffer(allocation) are views of it,
not copies. Arrays built on it are published without a copy. The memory returns to the producer
when this object, every view of it and every published batch using it are gone.

Do not write into it once a batch using it is published: consumers may be reading it, and in
sealed mode it becomes read-only (writing then crashes). In sealed mode an allocation is made in
the arena of the next batch published: allocate after the previous publish(); a batch using memory
of an earlier arena is copied (counted in stats["bytes_copied"]).)")
      .def_prop_ro("address", &PyAllocation::address, "Address of the first byte.")
      .def_prop_ro("nbytes", &PyAllocation::size, "Size in bytes.")
      .def("__len__", &PyAllocation::size);

  nb::class_<PyProducer>(m, "_Producer",
                         "shmarrow::Producer (use shmarrow.Producer, which wraps it)")
      .def(
          "__init__",
          [](PyProducer* self, const std::string& address, nb::handle schema_capsule, bool ring,
             int64_t ring_size, int block_timeout_ms, int max_consumers, int max_in_flight,
             int retain, unsigned socket_mode, std::vector<unsigned> allowed_uids,
             bool allow_any_uid, const std::string& name, const std::string& pages) {
            auto schema = ImportSchemaCapsule(schema_capsule);
            ProducerOptions options;
            options.pages = ValueOrThrow(ParsePagePolicy(pages), "pages");
            options.mode = ring ? MemoryMode::kRing : MemoryMode::kSealed;
            options.ring_size = ring_size;
            options.block_timeout_ms = block_timeout_ms;
            options.max_consumers = max_consumers;
            options.max_in_flight = max_in_flight;
            options.retain = retain;
            options.socket_mode = socket_mode;
            options.allowed_uids = std::move(allowed_uids);
            options.allow_any_uid = allow_any_uid;
            options.name = name;
            new (self) PyProducer(address, std::move(schema), options);
          },
          nb::arg("address"), nb::arg("schema"), nb::arg("ring"), nb::arg("ring_size"),
          nb::arg("block_timeout_ms"), nb::arg("max_consumers"), nb::arg("max_in_flight"),
          nb::arg("retain"), nb::arg("socket_mode"), nb::arg("allowed_uids"),
          nb::arg("allow_any_uid"), nb::arg("name"), nb::arg("pages"))
      .def("publish_pyarrow_batch", &PyProducer::PublishPyarrowBatch, nb::arg("batch"))
      .def("publish_stream", &PyProducer::PublishStream, nb::arg("stream"))
      .def("allocate", &PyProducer::Allocate, nb::arg("nbytes"))
      .def("memory_pool", &PyProducer::MemoryPool)
      .def("change_schema", &PyProducer::ChangeSchema, nb::arg("schema"))
      .def("end", &PyProducer::End)
      .def("set_request_handler", &PyProducer::SetRequestHandler, nb::arg("handler").none())
      .def("wait_for_consumers", &PyProducer::WaitForConsumers, nb::arg("count"),
           nb::arg("timeout_ms"))
      .def("wait_until_drained", &PyProducer::WaitUntilDrained, nb::arg("timeout_ms"))
      .def("stats", &PyProducer::Stats)
      .def("schema", &PyProducer::Schema)
      .def_prop_ro("mode", &PyProducer::mode)
      .def_prop_ro("address", &PyProducer::address)
      .def_prop_ro("closed", &PyProducer::closed)
      .def("close", &PyProducer::Close);
}

}  // namespace shmarrow::python
