// x86-64: one build carries AVX-512, AVX2+FMA and baseline clones of the hot loops, chosen at
// load time (GCC function multiversioning), so `make kernels` output runs on any x86-64 host
// (a Docker image built elsewhere included). Other architectures (aarch64: NEON is baseline)
// and compilers without target_clones (build.sh retries with -DMNV3_NO_MULTI_ISA) use the
// plain build.
#ifndef MNV3_MULTI_ISA_H_
#define MNV3_MULTI_ISA_H_

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MNV3_NO_MULTI_ISA)
#define MULTI_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTI_ISA
#endif

#endif  // MNV3_MULTI_ISA_H_
