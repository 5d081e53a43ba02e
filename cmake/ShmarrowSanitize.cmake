# SHMARROW_SANITIZE: compile and link every target of this build (library, tools, tests, bench,
# examples, the Python extension) with gcc's or clang's sanitizers. scripts/sanitize.sh uses it
# for build-asan/ (address,undefined) and build-tsan/ (thread); docs/robustness.md, "Sanitizers".
# libarrow and libgtest come prebuilt and stay uninstrumented.
set(SHMARROW_SANITIZE "" CACHE STRING
    "Sanitizers for every target: address,undefined | thread (empty: none)")
if(SHMARROW_SANITIZE)
  if(NOT SHMARROW_SANITIZE MATCHES "^(address,undefined|address|undefined|thread)$")
    message(FATAL_ERROR "shmarrow: SHMARROW_SANITIZE='${SHMARROW_SANITIZE}'; expected "
                        "address,undefined, address, undefined or thread")
  endif()
  if(SHMARROW_BUILD_FUZZ)
    message(FATAL_ERROR "shmarrow: the fuzz targets choose their own sanitizers "
                        "(fuzz/run_bounded.sh); configure them without SHMARROW_SANITIZE")
  endif()
  # Stop at the first report so that a test fails on it, and keep frames for readable stacks.
  # No vptr check: it probes memory through a pipe, which fails in the tests that use up
  # RLIMIT_NOFILE, and then reports every virtual call as one on an invalid object.
  add_compile_options(-fsanitize=${SHMARROW_SANITIZE} -fno-omit-frame-pointer
                      -fno-sanitize-recover=all -fno-sanitize=vptr)
  add_link_options(-fsanitize=${SHMARROW_SANITIZE})
  message(STATUS "shmarrow: sanitizers ${SHMARROW_SANITIZE}")
endif()
