#ifndef IMAGEBUILD_CLINUX_SHIM_H
#define IMAGEBUILD_CLINUX_SHIM_H
/* Linux system calls without a glibc wrapper Swift can call (syscall(2) is variadic). */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
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

/* The root directory as a descriptor for ib_open_beneath (O_PATH is hidden behind _GNU_SOURCE). */
static inline int ib_open_directory_path(const char *path) {
    return open(path, 010000000 /* O_PATH */ | O_DIRECTORY | O_CLOEXEC);
}
#endif
