/* memset/memcpy: the compiler emits calls to these even in freestanding code. */
#include <pvkit/types.h>

void *memset(void *dst, int c, size_t n)
{
    volatile uint8_t *d = dst; /* volatile: stop the compiler turning this back into memset */
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    volatile uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}
