// Hot loops marked EDGEDB_CPU_CLONES are compiled twice on x86-64 (AVX2 and baseline)
// and picked once at load time by the CPU; elsewhere (aarch64: NEON is baseline) they
// are compiled once. No -march flags, so the library runs on any CPU of its architecture.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGEDB_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EDGEDB_CPU_CLONES
#endif
