# Finds Arrow C++ and provides the imported targets Arrow::arrow_shared and
# Arrow::arrow_flight_shared (Arrow Flight, for the bridge of docs/flight.md; only shmarrow_flight
# links it).
# A system Arrow C++ (find_package(Arrow CONFIG)) wins; otherwise the headers and libarrow shipped
# inside the pyarrow wheel of SHMARROW_PYTHON are used, so the C++ tools and the Python side load
# the same libarrow. What was found is recorded in SHMARROW_ARROW_* for the installed package.
# The Python extension (SHMARROW_BUILD_PYTHON) must share pyarrow's libarrow: no system Arrow then.
# Built by scikit-build-core (pip install .), the pyarrow is the build environment's, importable by
# the Python running the build.
if(DEFINED SKBUILD AND DEFINED Python_EXECUTABLE)
  set(SHMARROW_PYTHON "${Python_EXECUTABLE}")
endif()
set(SHMARROW_ARROW_LIBDIR "")
if(NOT SHMARROW_BUILD_PYTHON)
  find_package(Arrow CONFIG QUIET)
endif()
if(Arrow_FOUND)
  message(STATUS "shmarrow: using system Arrow ${Arrow_VERSION}")
else()
  if(NOT EXISTS "${SHMARROW_PYTHON}")
    message(FATAL_ERROR "shmarrow: no system Arrow C++ and no Python at SHMARROW_PYTHON="
                        "'${SHMARROW_PYTHON}'. Run scripts/bootstrap.sh first, or set "
                        "SHMARROW_PYTHON to a Python with pyarrow.")
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
  string(REGEX MATCH "^[0-9]+" SHMARROW_ARROW_MAJOR "${SHMARROW_PYARROW_VERSION}")
  set(CMAKE_BUILD_RPATH "${SHMARROW_ARROW_LIBDIR}")
  message(STATUS "shmarrow: using Arrow C++ from pyarrow ${SHMARROW_PYARROW_VERSION} (${SHMARROW_ARROW_LIBDIR})")
endif()
include("${CMAKE_CURRENT_LIST_DIR}/ShmarrowArrowTargets.cmake")
