# cmake --install: headers, the libraries, the CLI, the CMake package shmarrow (find_package:
# shmarrow::shmarrow, shmarrow::flight) and the pkg-config files shmarrow.pc and shmarrow-flight.pc.
include(CMakePackageConfigHelpers)
set(_shmarrow_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/shmarrow")

install(DIRECTORY include/shmarrow DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.h")
install(FILES "${PROJECT_BINARY_DIR}/include/shmarrow/version.h"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/shmarrow")
install(TARGETS shmarrow shmarrow_flight EXPORT shmarrowTargets)
# Installed programs and shared libraries find libarrow where the build found it (the pyarrow
# wheel's directory; a system Arrow needs none) and, built with BUILD_SHARED_LIBS, libshmarrow
# next to them.
set_target_properties(shmarrow shmarrow_flight PROPERTIES
  INSTALL_RPATH "$ORIGIN;${SHMARROW_ARROW_LIBDIR}")
if(SHMARROW_BUILD_CLI)
  set_target_properties(shmarrow_cli PROPERTIES
    INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR};${SHMARROW_ARROW_LIBDIR}")
  install(TARGETS shmarrow_cli)
endif()

install(EXPORT shmarrowTargets NAMESPACE shmarrow:: DESTINATION "${_shmarrow_cmake_dir}")
configure_package_config_file(cmake/shmarrowConfig.cmake.in
  "${PROJECT_BINARY_DIR}/shmarrowConfig.cmake" INSTALL_DESTINATION "${_shmarrow_cmake_dir}")
# 0.x: a new minor version may change the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/shmarrowConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/shmarrowConfig.cmake"
              "${PROJECT_BINARY_DIR}/shmarrowConfigVersion.cmake"
              cmake/ShmarrowArrowTargets.cmake
        DESTINATION "${_shmarrow_cmake_dir}")

# pkg-config: a system Arrow through its own arrow.pc / arrow-flight.pc, the pyarrow wheel's
# libraries by their versioned names, with an rpath to them. The prefix is found relative to the
# .pc file, so that `cmake --install --prefix` anywhere gives working files.
file(RELATIVE_PATH SHMARROW_PC_PREFIX_FROM_PCDIR "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" SHMARROW_PC_PREFIX_FROM_PCDIR "${SHMARROW_PC_PREFIX_FROM_PCDIR}")
# _shmarrow_pkg_config(NAME LIBRARY ARROW_LIBRARY REQUIRES DESCRIPTION): NAME.pc for lib LIBRARY
# over Arrow's ARROW_LIBRARY (arrow, arrow_flight) and the pkg-config packages REQUIRES.
function(_shmarrow_pkg_config name library arrow_library requires description)
  set(SHMARROW_PC_NAME "${name}")
  set(SHMARROW_PC_LIB "${library}")
  set(SHMARROW_PC_DESCRIPTION "${description}")
  set(SHMARROW_PC_ARROW_CFLAGS "")
  if(SHMARROW_ARROW_LIBDIR)
    if(arrow_library STREQUAL "arrow")
      set(SHMARROW_PC_ARROW_CFLAGS "-I${SHMARROW_ARROW_INCLUDE} -D_GLIBCXX_USE_CXX11_ABI=1")
    endif()
    set(SHMARROW_PC_ARROW_LIBS "-L${SHMARROW_ARROW_LIBDIR} -Wl,-rpath,${SHMARROW_ARROW_LIBDIR} "
                               "-l:lib${arrow_library}.so.${SHMARROW_ARROW_MAJOR}00")
    string(JOIN "" SHMARROW_PC_ARROW_LIBS ${SHMARROW_PC_ARROW_LIBS})
  else()
    set(SHMARROW_PC_ARROW_LIBS "")
    string(REPLACE "_" "-" arrow_pc "${arrow_library}")  # arrow.pc, arrow-flight.pc
    list(APPEND requires "${arrow_pc}")
  endif()
  string(JOIN " " SHMARROW_PC_REQUIRES ${requires})
  configure_file(cmake/shmarrow.pc.in "${PROJECT_BINARY_DIR}/${name}.pc" @ONLY)
  install(FILES "${PROJECT_BINARY_DIR}/${name}.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endfunction()
_shmarrow_pkg_config(shmarrow shmarrow arrow ""
  "Apache Arrow streams between processes through memfd shared memory")
_shmarrow_pkg_config(shmarrow-flight shmarrow_flight arrow_flight shmarrow
  "shmarrow over Arrow Flight: ConnectAny and the Flight bridge")
