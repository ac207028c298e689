#ifndef IMAGEBUILD_CARCHIVE_SHIM_H
#define IMAGEBUILD_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
#include <zlib.h>
#include <sys/types.h>
#include <sys/sysmacros.h>

#include <stdio.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* renameat2 has a glibc wrapper only behind _GNU_SOURCE; call the syscall. */
static inline int ib_rename_exchange(const char *from, const char *to) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 2 /* RENAME_EXCHANGE */);
}
/* syncfs likewise (publish flushes a whole generation with one call). */
static inline int ib_syncfs(int fd) { return (int)syscall(SYS_syncfs, fd); }
static inline dev_t ib_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }

/* libarchive's status codes and file-type bits are macros; Swift cannot see
   every macro form, so they are re-exported as inline constants here. */
static inline int ib_archive_ok(void) { return ARCHIVE_OK; }
static inline int ib_archive_eof(void) { return ARCHIVE_EOF; }
static inline int ib_archive_warn(void) { return ARCHIVE_WARN; }
static inline int ib_archive_retry(void) { return ARCHIVE_RETRY; }
static inline int ib_archive_fatal(void) { return ARCHIVE_FATAL; }

/* zlib's init functions are macros over the *_ variants with version checks. */
static inline int ib_deflateInit2(z_streamp strm, int level, int method, int windowBits, int memLevel, int strategy) {
    return deflateInit2(strm, level, method, windowBits, memLevel, strategy);
}
static inline int ib_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}
#endif
