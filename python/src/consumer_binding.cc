// shmarrow._native._Consumer: shmarrow::Consumer for Python.
//
// Reads never block inside the library: a blocking read is TryNext, then poll() on the consumer's
// socket for at most kSliceMs with the GIL released, then a look at pending signals, again. Batches
// leave as pyarrow.RecordBatch objects wrapping the C++ batch itself (pyarrow's C API), over the
// shared memory (no copy); the memory returns to the producer when the last Python object over a
// batch is freed.
#include <arrow/type.h>
#include <arrow/util/io_util.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

#include "bindings.h"
#include "common.h"
#include "shmarrow/connect.h"
#include "shmarrow/consumer.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::python {
namespace {

/// The calling thread (holding the GIL) is its interpreter's only one: nobody else waits for the
/// GIL. A thread that starts meanwhile needs the GIL to run Python, so it waits at most one take.
bool OnlyPythonThread() {
#if defined(Py_LIMITED_API)  // (the thread list is not in the limited API: assume others)
  return false;
#else
  PyThreadState* self = PyThreadState_Get();
  PyThreadState* head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(self));
  return head == self && PyThreadState_Next(head) == nullptr;
#endif
}

/// What the Python object and every reader exported from it share. Consumer is not thread-safe:
/// every use takes `mutex` (with the GIL released).
struct ConsumerState {
  std::mutex mutex;
  std::shared_ptr<Consumer> consumer;  // null once closed
  std::string mode;
  int poll_fd = -1;          // readable when TryNext may have something; -1: never waits
  UniqueFd always_readable;  // the single hand-over has no socket: fileno() gives this eventfd
  bool ended = false;
  int busy_poll_us = 0;  // ConsumerOptions::busy_poll_us: how long a read polls before it sleeps
  // How long a blocking read polls before it waits on poll_fd: kLongestWatch after a wait that
  // ended within that long (batches a little too far apart to be there at once, each paying a
  // wake-up: 30-40 µs where the consumer's vCPU idles on the development VM), else not at all.
  // The C++ consumer's ReadNext watches its queue the same way before it sleeps.
  std::atomic<int64_t> watch_us{0};
  static constexpr auto kLongestWatch = std::chrono::microseconds(50);

  /// When a read starting now stops polling and waits on poll_fd.
  std::chrono::steady_clock::time_point SpinUntil() const {
    return std::chrono::steady_clock::now() +
           std::chrono::microseconds(std::max<int64_t>(busy_poll_us, watch_us.load()));
  }
  /// Waits for poll_fd up to `slice` ms — unless still polling, then not at all.
  void Wait(std::chrono::steady_clock::time_point spin_until, int slice) {
    const auto now = std::chrono::steady_clock::now();
    if (now < spin_until) return;
    WaitReadable(poll_fd, slice);
    const bool short_wait = std::chrono::steady_clock::now() - now <= kLongestWatch;
    watch_us.store(short_wait ? kLongestWatch.count() : 0);
  }

  enum class Step { kBatch, kEnd, kPending };

  /// Takes what has arrived, without blocking. Call without the GIL.
  arrow::Result<Step> Take(std::shared_ptr<arrow::RecordBatch>* batch) {
    std::lock_guard lock(mutex);
    return TakeLocked(batch);
  }

  /// Take with the GIL held, sparing a release and re-acquisition of the GIL per batch, where
  /// that cannot deadlock or stall other threads: the lock is free (try_lock: a thread holding
  /// the GIL never waits for it) and either TryNext's work is short (basic validation; full
  /// validation of a large batch would hold the GIL for long) or no other Python thread exists
  /// to wait for the GIL meanwhile. nullopt: take it with the GIL released.
  std::optional<arrow::Result<Step>> TakeHoldingGil(std::shared_ptr<arrow::RecordBatch>* batch) {
    if (!take_holding_gil && !OnlyPythonThread()) return std::nullopt;
    std::unique_lock lock(mutex, std::try_to_lock);
    if (!lock.owns_lock()) return std::nullopt;
    return TakeLocked(batch);
  }

  bool take_holding_gil = false;

 private:
  arrow::Result<Step> TakeLocked(std::shared_ptr<arrow::RecordBatch>* batch) {
    batch->reset();
    if (consumer == nullptr) return arrow::Status::Cancelled("the consumer is closed");
    if (ended) return Step::kEnd;
    ARROW_ASSIGN_OR_RAISE(auto polled, consumer->TryNext(batch));
    switch (polled) {
      case Consumer::Poll::kBatch:
        return Step::kBatch;
      case Consumer::Poll::kEnd:
        ended = true;
        return Step::kEnd;
      default:
        return Step::kPending;
    }
  }
};

std::string TimeoutMessage(int64_t timeout_ms) {
  return "no message from the producer within " + std::to_string(timeout_ms) + " ms";
}

/// The consumer as an arrow::RecordBatchReader for __arrow_c_stream__: the same interruptible
/// loop, for readers (pyarrow, polars, duckdb) that call it with or without the GIL.
class StreamReader final : public arrow::RecordBatchReader {
 public:
  StreamReader(std::shared_ptr<ConsumerState> state, std::shared_ptr<arrow::Schema> schema,
               int64_t timeout_ms)
      : state_(std::move(state)), schema_(std::move(schema)), timeout_ms_(timeout_ms) {}

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    const Deadline deadline(timeout_ms_);
    const auto spin_until = state_->SpinUntil();
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto step, state_->Take(batch));
      if (step == ConsumerState::Step::kBatch) {
        if (!(*batch)->schema()->Equals(*schema_)) {
          const auto changed = (*batch)->schema()->ToString();
          batch->reset();
          return arrow::Status::Invalid(
              "the producer changed the schema to {", changed,
              "}; an exported Arrow stream has a single schema (iterate the Consumer instead)");
        }
        return arrow::Status::OK();
      }
      if (step == ConsumerState::Step::kEnd) return arrow::Status::OK();
      ARROW_RETURN_NOT_OK(CheckSignalsFromCpp());
      if (deadline.expired()) {
        return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout,
                         TimeoutMessage(timeout_ms_));
      }
      state_->Wait(spin_until, deadline.Slice(kSliceMs));
    }
  }

 private:
  std::shared_ptr<ConsumerState> state_;
  std::shared_ptr<arrow::Schema> schema_;
  int64_t timeout_ms_;
};

/// The answer to a request, read under the consumer's lock.
class ResponseReader final : public arrow::RecordBatchReader {
 public:
  ResponseReader(std::shared_ptr<ConsumerState> state,
                 std::shared_ptr<arrow::RecordBatchReader> inner)
      : state_(std::move(state)), schema_(inner->schema()), inner_(std::move(inner)) {}

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    std::lock_guard lock(state_->mutex);
    if (state_->consumer == nullptr) return arrow::Status::Cancelled("the consumer is closed");
    return inner_->ReadNext(batch);
  }

 private:
  std::shared_ptr<ConsumerState> state_;
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<arrow::RecordBatchReader> inner_;
};

class PyConsumer {
 public:
  PyConsumer(const std::string& address, ConsumerOptions options, int64_t connect_timeout_ms,
             int64_t read_timeout_ms)
      : state_(std::make_shared<ConsumerState>()), read_timeout_ms_(read_timeout_ms) {
    const Deadline deadline(connect_timeout_ms);
    arrow::Result<std::shared_ptr<Consumer>> connected;
    RepeatInterruptibly(deadline, [&](int slice) {
      options.connect_timeout_ms = slice;  // the library retries while nobody listens
      connected = ConnectAny(address, options);
      if (connected.ok()) return true;
      const int err = arrow::internal::ErrnoFromStatus(connected.status());
      return err != ENOENT && err != ECONNREFUSED;  // another failure: done
    });
    state_->consumer = ValueOrThrow(std::move(connected), "connect");
    state_->busy_poll_us = options.busy_poll_us;
    state_->take_holding_gil = options.validation == Validation::kBasic;
    state_->mode = state_->consumer->mode();
    state_->poll_fd = state_->consumer->fd();
    if (state_->poll_fd < 0) {
      // The single hand-over: everything is there already, so "readable" is always true.
      state_->always_readable.reset(::eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK));
    }
  }

  ~PyConsumer() {
    ReleaseGil release;  // Bye, and whatever the last batches' release does
    state_.reset();
  }

  /// Blocks (interruptibly) for the next batch (a pyarrow.RecordBatch), or None at the end of
  /// the stream.
  nb::object Next(int64_t timeout_ms) {
    std::shared_ptr<arrow::RecordBatch> batch;
    auto step = TakeNow(&batch);  // a batch already there: returned without reading a clock
    if (step.ok() && *step == ConsumerState::Step::kPending) {
      const auto spin_until = state_->SpinUntil();
      const bool done = RepeatInterruptibly(Deadline(timeout_ms), [&](int slice) {
        state_->Wait(spin_until, slice);  // nothing there just now: no second look before waiting
        step = state_->Take(&batch);
        return !step.ok() || *step != ConsumerState::Step::kPending;
      });
      if (!done) {
        ThrowError(arrow::StatusCode::IOError, ErrorCode::kTimeout, TimeoutMessage(timeout_ms),
                   "read");
      }
    }
    return Result(step, batch);
  }

  /// Next with the consumer's read timeout (for next()).
  nb::object Iterate() { return Next(read_timeout_ms_); }

  /// Never blocks: the next batch, or None (nothing yet, or the end: see ended).
  nb::object TryNext() {
    std::shared_ptr<arrow::RecordBatch> batch;
    return Result(TakeNow(&batch), batch);
  }

  bool ended() {
    ReleaseGil release;
    std::lock_guard lock(state_->mutex);
    return state_->ended;
  }

  int fileno() {
    ReleaseGil release;
    std::lock_guard lock(state_->mutex);
    if (state_->consumer == nullptr) return -1;
    return state_->always_readable ? state_->always_readable.get() : state_->poll_fd;
  }

  nb::object Schema() {
    std::shared_ptr<arrow::Schema> schema;
    {
      ReleaseGil release;
      std::lock_guard lock(state_->mutex);
      if (state_->consumer != nullptr) schema = state_->consumer->schema();
    }
    if (schema == nullptr) {
      ThrowError(arrow::StatusCode::Cancelled, ErrorCode::kClosed, "the consumer is closed",
                 "schema");
    }
    return SchemaCapsule(*schema);
  }

  nb::dict Stats() {
    ConsumerStats stats;
    bool open = false;
    {
      ReleaseGil release;
      std::lock_guard lock(state_->mutex);
      if (state_->consumer != nullptr) {
        stats = state_->consumer->stats();
        open = true;
      }
    }
    if (!open) {
      ThrowError(arrow::StatusCode::Cancelled, ErrorCode::kClosed, "the consumer is closed",
                 "stats");
    }
    nb::dict out;
    out["batches"] = stats.batches;
    out["dropped"] = stats.dropped;
    out["schema_changes"] = stats.schema_changes;
    out["released"] = stats.released;
    return out;
  }

  const std::string& mode() const { return state_->mode; }

  /// The single hand-over's memfd: {inode, bytes, seals, mapped, address}; None in other modes.
  nb::object Handover() {
    std::shared_ptr<SharedStream> stream;
    {
      ReleaseGil release;
      std::lock_guard lock(state_->mutex);
      if (state_->consumer != nullptr) stream = state_->consumer->handover_stream();
    }
    if (stream == nullptr) return nb::none();
    nb::dict out;
    out["inode"] = stream->inode();
    out["bytes"] = stream->size();
    out["seals"] = stream->seals();
    out["mapped"] = stream->mapped();
    out["address"] = reinterpret_cast<uintptr_t>(stream->buffer()->data());
    return out;
  }

  bool closed() {
    ReleaseGil release;
    std::lock_guard lock(state_->mutex);
    return state_->consumer == nullptr;
  }

  /// Sends `request` to the producer's handler; returns a stream capsule of the answer.
  nb::object Request(nb::bytes request) {
    const std::string text(request.c_str(), request.size());
    arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> answer;
    {
      ReleaseGil release;
      std::lock_guard lock(state_->mutex);
      if (state_->consumer == nullptr) {
        answer = arrow::Status::Cancelled("the consumer is closed");
      } else {
        answer = state_->consumer->Request(text);
      }
    }
    auto reader = ValueOrThrow(std::move(answer), "request");
    return StreamCapsule(std::make_shared<ResponseReader>(state_, std::move(reader)));
  }

  /// The stream as an ArrowArrayStream capsule (the schema is today's).
  nb::object Stream(int64_t timeout_ms) {
    std::shared_ptr<arrow::Schema> schema;
    {
      ReleaseGil release;
      std::lock_guard lock(state_->mutex);
      if (state_->consumer != nullptr) schema = state_->consumer->schema();
    }
    if (schema == nullptr) {
      ThrowError(arrow::StatusCode::Cancelled, ErrorCode::kClosed, "the consumer is closed",
                 "export");
    }
    return StreamCapsule(std::make_shared<StreamReader>(state_, std::move(schema), timeout_ms));
  }

  void Close() {
    ReleaseGil release;
    std::shared_ptr<Consumer> consumer;
    {
      std::lock_guard lock(state_->mutex);
      consumer = std::move(state_->consumer);
    }
    consumer.reset();  // says Bye (unless an answer being read still holds it)
  }

 private:
  /// What a read returns: a pyarrow.RecordBatch, or None (the end, or nothing yet).
  static nb::object Result(const arrow::Result<ConsumerState::Step>& step,
                           const std::shared_ptr<arrow::RecordBatch>& batch) {
    if (!step.ok()) ThrowStatus(step.status(), "read");
    if (*step == ConsumerState::Step::kBatch) return WrapBatch(batch);
    return nb::none();
  }

  /// Takes what has arrived without waiting: with the GIL held where TakeHoldingGil allows it.
  arrow::Result<ConsumerState::Step> TakeNow(std::shared_ptr<arrow::RecordBatch>* batch) {
    if (auto step = state_->TakeHoldingGil(batch)) return std::move(*step);
    ReleaseGil release;
    return state_->Take(batch);
  }

  std::shared_ptr<ConsumerState> state_;
  int64_t read_timeout_ms_;
};

/// _Consumer's tp_iternext, which Python calls directly for next(): a __next__ defined as a
/// method would cost a method lookup and nanobind's dispatch per batch (a few percent of reading
/// a small one). NULL with no exception set is the end of the stream.
PyObject* ConsumerIterNext(PyObject* self) {
  if (!nb::inst_ready(self)) {
    PyErr_SetString(PyExc_TypeError, "uninitialized shmarrow._native._Consumer");
    return nullptr;
  }
  try {
    nb::object batch = nb::inst_ptr<PyConsumer>(self)->Iterate();
    return batch.is_none() ? nullptr : batch.release().ptr();
  } catch (nb::python_error& error) {
    error.restore();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& error) {  // as nanobind translates it for the other methods
    PyErr_SetString(PyExc_RuntimeError, error.what());
  }
  return nullptr;
}

PyObject* ConsumerIter(PyObject* self) { return Py_NewRef(self); }

PyType_Slot consumer_slots[] = {
    {Py_tp_iter, reinterpret_cast<void*>(ConsumerIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(ConsumerIterNext)},
    {0, nullptr},
};

}  // namespace

void BindConsumer(nb::module_& m) {
  nb::class_<PyConsumer>(m, "_Consumer",
                         "shmarrow::Consumer (use shmarrow.Consumer, which wraps it)",
                         nb::type_slots(consumer_slots))
      .def(
          "__init__",
          [](PyConsumer* self, const std::string& address, bool lossy, bool start_at_oldest,
             int max_in_flight, std::vector<std::string> columns, nb::object expect_schema,
             bool subset, bool validate_full, int64_t connect_timeout_ms, int64_t read_timeout_ms,
             int busy_poll_us, bool require_seals, const std::string& token,
             const std::string& tls_root_certs, const std::string& tls_override_hostname,
             bool upgrade, std::vector<unsigned> allowed_uids, bool allow_any_uid) {
            ConsumerOptions options;
            options.lossy = lossy;
            options.start_at_oldest = start_at_oldest;
            options.max_in_flight = max_in_flight;
            options.columns = std::move(columns);
            if (!expect_schema.is_none())
              options.expect_schema = ImportSchemaCapsule(expect_schema);
            options.match = subset ? SchemaMatch::kSubset : SchemaMatch::kExact;
            options.validation = validate_full ? Validation::kFull : Validation::kBasic;
            options.read_timeout_ms = static_cast<int>(read_timeout_ms);
            options.busy_poll_us = busy_poll_us;
            options.require_seals = require_seals;
            options.remote.token = token;
            options.remote.tls_root_certs = tls_root_certs;
            options.remote.tls_override_hostname = tls_override_hostname;
            options.remote.upgrade_to_shared_memory = upgrade;
            options.allowed_uids = std::move(allowed_uids);
            options.allow_any_uid = allow_any_uid;
            new (self) PyConsumer(address, std::move(options), connect_timeout_ms, read_timeout_ms);
          },
          nb::arg("address"), nb::arg("lossy"), nb::arg("start_at_oldest"),
          nb::arg("max_in_flight"), nb::arg("columns"), nb::arg("expect_schema").none(),
          nb::arg("subset"), nb::arg("validate_full"), nb::arg("connect_timeout_ms"),
          nb::arg("read_timeout_ms"), nb::arg("busy_poll_us"), nb::arg("require_seals"),
          nb::arg("token"), nb::arg("tls_root_certs"), nb::arg("tls_override_hostname"),
          nb::arg("upgrade"), nb::arg("allowed_uids"), nb::arg("allow_any_uid"))
      .def("next", &PyConsumer::Next, nb::arg("timeout_ms"),
           "Next batch as a pyarrow.RecordBatch; None at the end. Blocks, "
           "interruptibly; raises a timeout error after timeout_ms (-1: never).")
      .def("try_next", &PyConsumer::TryNext,
           "Next batch if one has arrived, else None (see ended).")
      .def_prop_ro("ended", &PyConsumer::ended)
      .def("fileno", &PyConsumer::fileno)
      .def("schema", &PyConsumer::Schema)
      .def("stats", &PyConsumer::Stats)
      .def_prop_ro("mode", &PyConsumer::mode)
      .def("handover", &PyConsumer::Handover)
      .def_prop_ro("closed", &PyConsumer::closed)
      .def("request", &PyConsumer::Request, nb::arg("request"))
      .def("stream", &PyConsumer::Stream, nb::arg("timeout_ms"))
      .def("close", &PyConsumer::Close);
}

}  // namespace shmarrow::python
