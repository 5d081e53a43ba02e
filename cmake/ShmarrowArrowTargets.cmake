# The Arrow C++ targets shmarrow links, Arrow::arrow_shared and Arrow::arrow_flight_shared, made
# the same way by the build (cmake/ShmarrowArrow.cmake) and by the installed shmarrowConfig.cmake:
# - SHMARROW_ARROW_LIBDIR empty: a system Arrow C++, through its CMake packages;
# - otherwise the pyarrow wheel's libraries in SHMARROW_ARROW_LIBDIR (versioned names only,
#   lib<name>.so.<SHMARROW_ARROW_MAJOR>00) and its headers in SHMARROW_ARROW_INCLUDE.
# Targets that exist already (a parent project found Arrow first) are kept.
if(NOT SHMARROW_ARROW_LIBDIR)
  find_package(Arrow CONFIG REQUIRED)
  find_package(ArrowFlight CONFIG REQUIRED)
  if(TARGET Arrow::arrow_flight_shared)
    return()
  endif()
  add_library(Arrow::arrow_flight_shared INTERFACE IMPORTED GLOBAL)
  target_link_libraries(Arrow::arrow_flight_shared INTERFACE ArrowFlight::arrow_flight_shared)
  return()
endif()

set(_shmarrow_arrow_properties
  INTERFACE_INCLUDE_DIRECTORIES "${SHMARROW_ARROW_INCLUDE}"
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=1")
set(_shmarrow_arrow_flight_properties INTERFACE_LINK_LIBRARIES Arrow::arrow_shared)
foreach(_shmarrow_name arrow arrow_flight)
  if(TARGET Arrow::${_shmarrow_name}_shared)
    continue()
  endif()
  set(_shmarrow_lib "${SHMARROW_ARROW_LIBDIR}/lib${_shmarrow_name}.so.${SHMARROW_ARROW_MAJOR}00")
  if(NOT EXISTS "${_shmarrow_lib}")
    message(FATAL_ERROR "shmarrow: ${_shmarrow_lib} not found: the pyarrow ${SHMARROW_ARROW_MAJOR} "
                        "that shmarrow was built against is gone or another version")
  endif()
  add_library(Arrow::${_shmarrow_name}_shared SHARED IMPORTED GLOBAL)
  set_target_properties(Arrow::${_shmarrow_name}_shared PROPERTIES
    IMPORTED_LOCATION "${_shmarrow_lib}" ${_shmarrow_${_shmarrow_name}_properties})
endforeach()
