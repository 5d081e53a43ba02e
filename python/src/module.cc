// shmarrow._native: the compiled part of the shmarrow Python package (nanobind). The Pythonic API
// is shmarrow._native_api, which imports pyarrow before this module so that both use the one
// libarrow of the pyarrow wheel.
#include "bindings.h"
#include "common.h"

NB_MODULE(_native, m) {
  namespace nb = nanobind;
  namespace py = shmarrow::python;
  m.doc() = "shmarrow's C++ library (Producer, Consumer, FlightBridge) for shmarrow._native_api";
  nb::set_leak_warnings(false);  // objects alive at exit (held by a traceback, ...) are fine
  py::InitMainThread();
  py::ImportPyarrowApi();
  m.def(
      "_set_error_factory", [](nb::handle factory) { py::SetErrorFactory(factory); },
      nb::arg("factory"),
      "factory(kind, errno, message, context) -> the exception to raise for a failure");
  py::BindConsumer(m);
  py::BindProducer(m);
  py::BindFlightBridge(m);
}
