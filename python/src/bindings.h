// The parts of the shmarrow._native module.
#pragma once

#include <nanobind/nanobind.h>

namespace shmarrow::python {

void BindConsumer(nanobind::module_& m);
void BindProducer(nanobind::module_& m);
void BindFlightBridge(nanobind::module_& m);

}  // namespace shmarrow::python
