#include "common.h"

#include <arrow/c/bridge.h>
#include <arrow/record_batch.h>
#include <arrow/sparse_tensor.h>
#include <arrow/type.h>
#include <arrow/util/io_util.h>
#include <nanobind/stl/string.h>
#include <poll.h>
#include <pythread.h>

#include <cxxabi.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <thread>

// pyarrow's C API: after the Arrow headers whose types it names (it includes none itself).
#include <arrow/python/lib_api.h>

namespace shmarrow::python {
namespace {

// A strong reference kept for the life of the process (never released: it may be needed until
// the interpreter is gone).
PyObject* g_error_factory = nullptr;
unsigned long g_main_thread = 0;

const char* KindOf(const arrow::Status& status) {
  switch (status.code()) {
    case arrow::StatusCode::OutOfMemory:
      return "out_of_memory";
    case arrow::StatusCode::KeyError:
      return "key";
    case arrow::StatusCode::TypeError:
      return "type";
    case arrow::StatusCode::Invalid:
      return "invalid";
    case arrow::StatusCode::IOError:
      return "io";
    case arrow::StatusCode::CapacityError:
      return "capacity";
    case arrow::StatusCode::IndexError:
      return "index";
    case arrow::StatusCode::Cancelled:
      return "cancelled";
    case arrow::StatusCode::NotImplemented:
      return "not_implemented";
    case arrow::StatusCode::SerializationError:
      return "serialization";
    case arrow::StatusCode::AlreadyExists:
      return "already_exists";
    default:
      return "unknown";
  }
}

[[noreturn]] void Raise(const char* kind, ErrorCode code, bool from_producer, int err,
                        const std::string& message, const char* context) {
  if (g_error_factory == nullptr) throw std::runtime_error(message);
  // A message may quote a peer's bytes: kept readable, never a UnicodeDecodeError instead.
  nb::object text = nb::steal(PyUnicode_DecodeUTF8(
      message.data(), static_cast<Py_ssize_t>(message.size()), "backslashreplace"));
  if (!text.is_valid()) throw nb::python_error();
  nb::object exception =
      nb::borrow(g_error_factory)(kind, ErrorCodeName(code), from_producer, err, text, context);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
  throw nb::python_error();
}

// Capsule destructors: a struct that nobody imported is released here.
void DeleteSchemaCapsule(PyObject* capsule) {
  auto* schema = static_cast<ArrowSchema*>(PyCapsule_GetPointer(capsule, "arrow_schema"));
  if (schema == nullptr) return PyErr_Clear();
  if (schema->release != nullptr) schema->release(schema);
  delete schema;
}
void DeleteArrayCapsule(PyObject* capsule) {
  auto* array = static_cast<ArrowArray*>(PyCapsule_GetPointer(capsule, "arrow_array"));
  if (array == nullptr) return PyErr_Clear();
  if (array->release != nullptr) array->release(array);
  delete array;
}
void DeleteStreamCapsule(PyObject* capsule) {
  auto* stream =
      static_cast<ArrowArrayStream*>(PyCapsule_GetPointer(capsule, "arrow_array_stream"));
  if (stream == nullptr) return PyErr_Clear();
  if (stream->release != nullptr) stream->release(stream);
  delete stream;
}

template <typename Struct>
nb::object MakeCapsule(Struct* value, const char* name, PyCapsule_Destructor destructor) {
  PyObject* capsule = PyCapsule_New(value, name, destructor);
  if (capsule == nullptr) {
    if (value->release != nullptr) value->release(value);
    delete value;
    throw nb::python_error();
  }
  return nb::steal(capsule);
}

template <typename Struct>
Struct* CapsulePointer(nb::handle capsule, const char* name) {
  auto* value = static_cast<Struct*>(PyCapsule_GetPointer(capsule.ptr(), name));
  if (value == nullptr) throw nb::python_error();  // TypeError/ValueError: not such a capsule
  if (value->release == nullptr) {
    ThrowError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
               std::string("the ") + name + " capsule was already consumed", "import");
  }
  return value;
}

}  // namespace

void SetErrorFactory(nb::handle factory) {
  Py_XINCREF(factory.ptr());
  PyObject* old = g_error_factory;
  g_error_factory = factory.ptr();
  Py_XDECREF(old);
}

void ThrowStatus(const arrow::Status& status, const char* context) {
  const int err = arrow::internal::ErrnoFromStatus(status);
  const ErrorDetail* coded = ErrorDetailOf(status);
  std::string message = status.message();
  // A foreign detail (not errno, not shmarrow's code) is kept in the text.
  if (status.detail() != nullptr && err == 0 && coded == nullptr) {
    message += " (" + status.detail()->ToString() + ")";
  }
  Raise(KindOf(status), coded == nullptr ? ErrorCode::kNone : coded->code(),
        coded != nullptr && coded->from_producer(), err, message, context);
}

void ThrowError(arrow::StatusCode kind, ErrorCode code, const std::string& message,
                const char* context) {
  ThrowStatus(MakeError(kind, code, message), context);
}

nb::object SchemaCapsule(const arrow::Schema& schema) {
  auto* out = new ArrowSchema;
  out->release = nullptr;
  const auto status = arrow::ExportSchema(schema, out);
  if (!status.ok()) {
    delete out;
    ThrowStatus(status, "export");
  }
  return MakeCapsule(out, "arrow_schema", DeleteSchemaCapsule);
}

void ImportPyarrowApi() {
  if (import_pyarrow__lib() != 0) throw nb::python_error();
}

nb::object WrapBatch(const std::shared_ptr<arrow::RecordBatch>& batch) {
  PyObject* wrapped = pyarrow_wrap_batch(batch);
  if (wrapped == nullptr) throw nb::python_error();
  return nb::steal(wrapped);
}

std::shared_ptr<arrow::RecordBatch> UnwrapBatch(nb::handle object) {
  if (!pyarrow_is_batch(object.ptr())) return nullptr;
  return pyarrow_unwrap_batch(object.ptr());
}

nb::object StreamCapsule(std::shared_ptr<arrow::RecordBatchReader> reader) {
  auto* out = new ArrowArrayStream;
  out->release = nullptr;
  const auto status = arrow::ExportRecordBatchReader(std::move(reader), out);
  if (!status.ok()) {
    delete out;
    ThrowStatus(status, "export");
  }
  return MakeCapsule(out, "arrow_array_stream", DeleteStreamCapsule);
}

std::shared_ptr<arrow::Schema> ImportSchemaCapsule(nb::handle capsule) {
  auto* schema = CapsulePointer<ArrowSchema>(capsule, "arrow_schema");
  return ValueOrThrow(arrow::ImportSchema(schema), "import");
}

std::shared_ptr<arrow::RecordBatchReader> ImportStreamCapsule(nb::handle capsule) {
  auto* stream = CapsulePointer<ArrowArrayStream>(capsule, "arrow_array_stream");
  return ValueOrThrow(arrow::ImportRecordBatchReader(stream), "import");
}

void InitMainThread() {
  nb::object main = nb::module_::import_("threading").attr("main_thread")();
  g_main_thread = nb::cast<unsigned long>(main.attr("ident"));
}

bool OnMainThread() { return PyThread_get_thread_ident() == g_main_thread; }

arrow::Status CheckSignalsFromCpp() {
  if (!OnMainThread() || !Py_IsInitialized()) return arrow::Status::OK();
  arrow::Status status;
  const PyGILState_STATE gil = PyGILState_Ensure();
  if (PyErr_CheckSignals() != 0) {
    const bool interrupt = PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
    std::string what = "KeyboardInterrupt";
    if (!interrupt) {
      nb::python_error error;  // takes the exception, which cannot travel through Arrow
      what = nb::str(error.type().attr("__name__")).c_str();
    }
    PyErr_Clear();
    if (interrupt) PyErr_SetInterrupt();
    status = arrow::Status::Cancelled("interrupted by a signal (", what, ")");
  }
  PyGILState_Release(gil);
  return status;
}

namespace {
bool Finalizing() {
#if defined(Py_LIMITED_API)
  return false;
#elif PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

[[noreturn]] void Park() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));  // until the process exits
}

}  // namespace

ReleaseGil::~ReleaseGil() {
  if (!OnMainThread() && Finalizing()) Park();
  try {
    PyEval_RestoreThread(state_);
  } catch (abi::__forced_unwind&) {
    // Finalization began while this thread waited for the GIL: Python ends it with pthread_exit,
    // whose unwinding would reach noexcept frames (std::terminate). Stay here instead.
    Park();
  }
}

PyGILState_STATE EnsureGil() {
  if (!OnMainThread() && Finalizing()) Park();
  try {
    return PyGILState_Ensure();
  } catch (abi::__forced_unwind&) {
    Park();
  }
}

void WaitReadable(int fd, int timeout_ms) {
  if (timeout_ms <= 0) return;
  if (fd < 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    return;
  }
  pollfd p{fd, POLLIN, 0};
  (void)::poll(&p, 1, timeout_ms);  // EINTR (a signal) returns early, as wanted
}

}  // namespace shmarrow::python
