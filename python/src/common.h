// Helpers shared by the binding's parts: errors, Arrow C data interface capsules, signals, polling.
//
// Rules every part follows (they keep the GIL and the library's threads from deadlocking):
// - Every call into shmarrow::Producer or shmarrow::Consumer is made with the GIL released. The
//   producer's I/O thread may free batches whose buffers belong to Python objects (their release
//   takes the GIL) while it holds the producer's lock, so a thread holding the GIL must never wait
//   for that lock. One exception: Consumer::TryNext, which never blocks, runs with the GIL held
//   when the binding's lock is free at once (ConsumerState::TakeHoldingGil).
// - A binding lock (ConsumerState::mutex, ProducerState::mutex) is never held while the GIL is
//   being acquired.
// - Blocking waits are slices of at most kSliceMs; between slices pending signals are handled, so
//   Ctrl-C interrupts them.
#pragma once

#include <Python.h>
#include <arrow/c/abi.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>
#include <arrow/status.h>
#include <nanobind/nanobind.h>

#include "deadline.h"
#include "shmarrow/error.h"

#include <chrono>
#include <memory>
#include <string>

namespace shmarrow::python {

namespace nb = nanobind;

/// Longest a blocking call waits without looking at pending signals.
inline constexpr int kSliceMs = 100;

// ---- errors --------------------------------------------------------------------------------------

/// The Python callable (set by shmarrow._native_api) that turns (kind, code, from_producer,
/// errno, message, context) into the exception to raise: kind is Arrow's status code ("io",
/// "invalid", ...), code the shmarrow ErrorCode's name ("timeout", "none", ...). Without one,
/// RuntimeError is raised.
void SetErrorFactory(nb::handle factory);

/// Raises the Python exception for `status` (a ShmarrowError subclass chosen by its code, errno and
/// message). `context` names the operation ("connect", "publish", "request", ...).
[[noreturn]] void ThrowStatus(const arrow::Status& status, const char* context);

/// Raises the exception for a failure the binding finds itself (a timeout of its own wait, a
/// closed object, a bad argument), as if the library had returned it with `code`.
[[noreturn]] void ThrowError(arrow::StatusCode kind, ErrorCode code, const std::string& message,
                             const char* context);

inline void CheckOk(const arrow::Status& status, const char* context) {
  if (!status.ok()) ThrowStatus(status, context);
}

template <typename T>
T ValueOrThrow(arrow::Result<T> result, const char* context) {
  if (!result.ok()) ThrowStatus(result.status(), context);
  return std::move(result).ValueUnsafe();
}

// ---- Arrow C data interface capsules (names from the Arrow PyCapsule interface) -----------------

nb::object SchemaCapsule(const arrow::Schema& schema);
nb::object StreamCapsule(std::shared_ptr<arrow::RecordBatchReader> reader);

/// Imports pyarrow's own C API (pyarrow.lib's, declared in arrow/python/lib_api.h), through which
/// batches pass between pyarrow and this module as the C++ objects pyarrow wraps: no export and
/// import through the C data interface, no schema compared or converted. Holds the GIL; throws
/// when pyarrow.lib does not provide it.
void ImportPyarrowApi();

/// A pyarrow.RecordBatch of `batch` itself (no copy): it holds the batch until pyarrow lets go of
/// it. Holds the GIL.
nb::object WrapBatch(const std::shared_ptr<arrow::RecordBatch>& batch);

/// The C++ batch a pyarrow.RecordBatch wraps (no copy); nullptr for any other object. Holds the
/// GIL.
std::shared_ptr<arrow::RecordBatch> UnwrapBatch(nb::handle object);

std::shared_ptr<arrow::Schema> ImportSchemaCapsule(nb::handle capsule);
std::shared_ptr<arrow::RecordBatchReader> ImportStreamCapsule(nb::handle capsule);

// ---- signals -------------------------------------------------------------------------------------

/// Records which thread is Python's main thread (signal handlers run only there).
void InitMainThread();
bool OnMainThread();

/// Holds the GIL: raises the pending signal handler's exception (KeyboardInterrupt) if any.
inline void RaiseIfSignalled() {
  if (PyErr_CheckSignals() != 0) throw nb::python_error();
}

/// For C++ readers called by other libraries, maybe without the GIL: on Python's main thread,
/// runs pending signal handlers; when one raised, returns Cancelled and, for KeyboardInterrupt,
/// re-arms it (PyErr_SetInterrupt) so that Python raises it as soon as control returns there.
/// Never takes the GIL on other threads.
arrow::Status CheckSignalsFromCpp();

// ---- the GIL ------------------------------------------------------------------------------------

/// Releases the GIL for its scope (as nb::gil_scoped_release), but when the interpreter is
/// finalizing, a thread other than the main one does not take it back: it parks for good. (Taking
/// it back would end the thread by unwinding through C++ frames that cannot be unwound: a daemon
/// thread still iterating a Consumer at exit would abort the process.)
class ReleaseGil {
 public:
  ReleaseGil() : state_(PyEval_SaveThread()) {}
  ~ReleaseGil();
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;

 private:
  PyThreadState* state_;
};

/// PyGILState_Ensure for threads Python does not know (the producer's), with the same care.
PyGILState_STATE EnsureGil();

// ---- time and polling ----------------------------------------------------------------------------

/// Deadline for a timeout in ms (-1: none); waits are cut into Slice(kSliceMs).
using internal::Deadline;

/// Waits up to timeout_ms for `fd` to become readable (or for a signal). fd < 0: just sleeps.
void WaitReadable(int fd, int timeout_ms);

/// Calls `step(slice_ms)` with the GIL released until it returns true (done) or `deadline` has
/// passed (then returns false). On Python's main thread the GIL is taken back after each slice
/// (at most kSliceMs) to run signal handlers: a KeyboardInterrupt is raised from here. Other
/// threads, where Python runs no signal handlers, wait without taking the GIL back.
template <typename Step>
bool RepeatInterruptibly(const Deadline& deadline, Step&& step) {
  const bool main = OnMainThread();
  for (;;) {
    bool done = false;
    bool passed = false;
    {
      ReleaseGil release;
      for (;;) {
        done = step(deadline.Slice(kSliceMs));
        if (done) break;
        passed = deadline.expired();
        if (passed || main) break;
      }
    }
    if (done) return true;
    if (passed) return false;
    RaiseIfSignalled();
  }
}

}  // namespace shmarrow::python
