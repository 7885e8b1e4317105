/*
 * phc-read: read the PTP hardware clock /dev/ptp0 and CLOCK_REALTIME once each, as
 * phc_ctl's "get" does, and print both in nanoseconds:
 *
 *     phc-read: ptp0 <ns> realtime <ns>
 *
 * Under pvkit /dev/ptp0 is Linux's ptp_kvm clock, so each read is a KVM PTP hypercall
 * answered with the host's wall clock. A Linux arm64 program with no C library (raw
 * system calls), so it builds with the same cross compiler as the SDK guests and the
 * initramfs needs nothing else. A dynamic POSIX clock's ID comes from its descriptor:
 * clockid = (~fd << 3) | 3 (Linux Documentation/driver-api/ptp.rst, "FD_TO_CLOCKID").
 */

typedef unsigned long u64;
typedef long s64;

enum { SYS_openat = 56, SYS_close = 57, SYS_write = 64, SYS_exit = 93, SYS_clock_gettime = 113 };
enum { AT_FDCWD = -100, O_RDONLY = 0, CLOCK_REALTIME = 0, CLOCKFD = 3 };

struct timespec {
    s64 tv_sec;
    s64 tv_nsec;
};

static s64 syscall3(s64 nr, s64 a, s64 b, s64 c)
{
    register s64 x8 __asm__("x8") = nr;
    register s64 x0 __asm__("x0") = a;
    register s64 x1 __asm__("x1") = b;
    register s64 x2 __asm__("x2") = c;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}

static u64 length(const char *s)
{
    u64 n = 0;
    while (s[n])
        n++;
    return n;
}

static void say(const char *s)
{
    syscall3(SYS_write, 1, (s64)s, (s64)length(s));
}

static void say_number(u64 v)
{
    char buf[24];
    int i = sizeof(buf) - 1;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    say(&buf[i]);
}

static __attribute__((noreturn)) void leave(int status)
{
    syscall3(SYS_exit, status, 0, 0);
    for (;;)
        ;
}

static int read_ns(s64 clock, u64 *ns)
{
    struct timespec ts;
    if (syscall3(SYS_clock_gettime, clock, (s64)&ts, 0) != 0)
        return -1;
    *ns = (u64)ts.tv_sec * 1000000000ul + (u64)ts.tv_nsec;
    return 0;
}

void _start(void)
{
    s64 fd = syscall3(SYS_openat, AT_FDCWD, (s64) "/dev/ptp0", O_RDONLY);
    if (fd < 0) {
        say("phc-read: cannot open /dev/ptp0\n");
        leave(1);
    }
    u64 ptp, real;
    if (read_ns((~fd << 3) | CLOCKFD, &ptp) || read_ns(CLOCK_REALTIME, &real)) {
        say("phc-read: clock_gettime failed\n");
        leave(1);
    }
    syscall3(SYS_close, fd, 0, 0);
    say("phc-read: ptp0 ");
    say_number(ptp);
    say(" realtime ");
    say_number(real);
    say("\n");
    leave(0);
}
