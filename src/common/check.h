// SHMKV_CHECK aborts with the failed condition on every build; SHMKV_DCHECK only in debug builds
// (mimalloc's habit: the allocator checks its own invariants where it costs nothing in release).
#pragma once

#include <cstdio>
#include <cstdlib>

#define SHMKV_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: shmkv check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

#ifdef NDEBUG
#define SHMKV_DCHECK(cond) \
  do {                     \
  } while (0)
#else
#define SHMKV_DCHECK(cond) SHMKV_CHECK(cond)
#endif
