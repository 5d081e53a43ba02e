# Provides the imported targets Arrow::arrow_shared and Arrow::arrow_flight_shared (Arrow Flight,
# for the bridge of docs/flight.md).
# A system Arrow C++ (find_package(Arrow CONFIG)) wins; otherwise the headers and libarrow shipped
# inside the pyarrow wheel of SHMARROW_PYTHON are used, so the C++ tools and the Python side load
# the same libarrow.
# The Python extension (SHMARROW_BUILD_PYTHON) must share pyarrow's libarrow: no system Arrow then.
# Built by scikit-build-core (pip install .), the pyarrow is the build environment's, importable by
# the Python running the build.
if(DEFINED SKBUILD AND DEFINED Python_EXECUTABLE)
  set(SHMARROW_PYTHON "${Python_EXECUTABLE}")
endif()
if(NOT SHMARROW_BUILD_PYTHON)
  find_package(Arrow CONFIG QUIET)
  if(Arrow_FOUND)
    message(STATUS "shmarrow: using system Arrow ${Arrow_VERSION}")
    find_package(ArrowFlight CONFIG REQUIRED)
    add_library(Arrow::arrow_flight_shared INTERFACE IMPORTED GLOBAL)
    target_link_libraries(Arrow::arrow_flight_shared INTERFACE ArrowFlight::arrow_flight_shared)
    return()
  endif()
endif()

if(NOT EXISTS "${SHMARROW_PYTHON}")
  message(FATAL_ERROR "shmarrow: no system Arrow C++ and no Python at SHMARROW_PYTHON="
                      "'${SHMARROW_PYTHON}'. Run scripts/bootstrap.sh first.")
endif()
execute_process(
  COMMAND "${SHMARROW_PYTHON}" -c
          "import pyarrow as pa; print(pa.get_include()); print(pa.get_library_dirs()[0]); print(pa.__version__)"
  OUTPUT_VARIABLE _pa_out RESULT_VARIABLE _pa_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _pa_rc EQUAL 0)
  message(FATAL_ERROR "shmarrow: '${SHMARROW_PYTHON}' cannot import pyarrow")
endif()
string(REPLACE "\n" ";" _pa_lines "${_pa_out}")
list(GET _pa_lines 0 SHMARROW_ARROW_INCLUDE)
list(GET _pa_lines 1 SHMARROW_ARROW_LIBDIR)
list(GET _pa_lines 2 SHMARROW_PYARROW_VERSION)
# The wheel ships versioned names only (libarrow.so.2600); pick the one matching its major version.
string(REGEX MATCH "^[0-9]+" _pa_major "${SHMARROW_PYARROW_VERSION}")
# The wheel's lib<name>.so.<major>00 as the imported target Arrow::<name>_shared.
function(_shmarrow_wheel_library name)
  set(_lib "${SHMARROW_ARROW_LIBDIR}/lib${name}.so.${_pa_major}00")
  if(NOT EXISTS "${_lib}")
    message(FATAL_ERROR "shmarrow: ${_lib} not found in the pyarrow wheel")
  endif()
  add_library(Arrow::${name}_shared SHARED IMPORTED GLOBAL)
  set_target_properties(Arrow::${name}_shared PROPERTIES
    IMPORTED_LOCATION "${_lib}" ${ARGN})
endfunction()
_shmarrow_wheel_library(arrow
  INTERFACE_INCLUDE_DIRECTORIES "${SHMARROW_ARROW_INCLUDE}"
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=1")
_shmarrow_wheel_library(arrow_flight INTERFACE_LINK_LIBRARIES Arrow::arrow_shared)
set(CMAKE_BUILD_RPATH "${SHMARROW_ARROW_LIBDIR}")
message(STATUS "shmarrow: using Arrow C++ from pyarrow ${SHMARROW_PYARROW_VERSION} (${SHMARROW_ARROW_LIBDIR})")
