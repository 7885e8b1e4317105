/* Fixed-width types for freestanding guests. */
#ifndef PVKIT_TYPES_H
#define PVKIT_TYPES_H
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long int64_t;
typedef int int32_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
#define PVKIT_MAX_CPUS 256
#define PVKIT_STACK_SIZE 16384
#endif
