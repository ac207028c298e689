#ifndef IMAGEBUILD_CLINUX_SHIM_H
#define IMAGEBUILD_CLINUX_SHIM_H
/* Linux interfaces Swift's Glibc module leaves out: openat2 (no wrapper; syscall(2) is variadic),
 * epoll and eventfd (for DatagramIO's reactor). */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

/* openat2(2) confined to dirfd: the kernel refuses any resolution that leaves it ("..", absolute
 * symlinks, symlinks out: EXDEV) and magic links. Returns the descriptor, or -1 with errno set
 * (ENOSYS before Linux 5.6). */
static inline int ib_open_beneath(int dirfd, const char *path, int flags) {
#ifdef SYS_openat2
    struct open_how how = {0};
    how.flags = (unsigned long long)flags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Names the calling thread (top, perf); the kernel keeps 15 bytes. */
static inline void ib_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

/* The root directory as a descriptor for ib_open_beneath (O_PATH is hidden behind _GNU_SOURCE). */
static inline int ib_open_directory_path(const char *path) {
    return open(path, 010000000 /* O_PATH */ | O_DIRECTORY | O_CLOEXEC);
}
/* The head of Linux's struct tcp_info (linux/tcp.h) through tcpi_bytes_acked (Linux 4.1), which the
 * struct in glibc's netinet/tcp.h lacks: how many bytes the peer has acknowledged, i.e. read. A
 * getsockopt(TCP_INFO) with this size fills exactly these fields. */
struct ib_tcp_info_head {
    uint8_t state, ca_state, retransmits, probes, backoff, options, wscale, flags;
    uint32_t rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets;
    uint32_t last_data_sent, last_ack_sent, last_data_recv, last_ack_recv;
    uint32_t pmtu, rcv_ssthresh, rtt, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering;
    uint32_t rcv_rtt, rcv_space, total_retrans;
    uint64_t pacing_rate, max_pacing_rate, bytes_acked;
};
_Static_assert(offsetof(struct ib_tcp_info_head, bytes_acked) == 120, "layout of linux/tcp.h's struct tcp_info");

#endif
