// SHMKV_EXPORT marks what libshmkv-client exports. The library is built with hidden symbol
// visibility (-fvisibility=hidden -fvisibility-inlines-hidden): only the classes and functions of
// include/shmkv/*.h that carry this macro are part of its ABI; its internals and the libraries it
// uses (fmt, spdlog, OpenSSL) stay private, so an engine may link other versions of them.
//
// In a program that includes these headers the attribute is harmless (it only restates the
// default visibility).
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define SHMKV_EXPORT [[gnu::visibility("default")]]
#else
#define SHMKV_EXPORT
#endif
