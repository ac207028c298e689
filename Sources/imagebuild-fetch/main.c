/*
 * imagebuild-fetch: stage 1's image loader. Streams one HTTP URL to standard
 * output (or a file) in one pass, hashing every byte with SHA-256 as it goes,
 * and continues a broken download from the byte it reached (HTTP Range), so
 * that the unpacker reading its output never starts over.
 *
 *   imagebuild-fetch [-r RETRIES] [-t SECONDS] [-P] [-H 'Name: value']... [-o FILE] [-s SHA256] URL
 *                    [[-o FILE] [-s SHA256] URL]...
 *   imagebuild-fetch -c FILE -s SHA256
 *
 * Several URLs are fetched in order over one kept-alive connection (while they
 * name the same server): stage 1 takes a node's secrets, its overlay archives
 * and then its image in one go, and a boot storm costs the server one
 * connection per node for all of them instead of one per file. The requests
 * for all of them go in the first write (HTTP/1.1 pipelining, RFC 9112 9.3.2),
 * so the server reads them at once and the node waits one round trip, not
 * one per file; a server that closes after an answer anyway gets the rest
 * asked for again on a new connection. Each URL but
 * the last then needs its own -o (the last may go to standard output); -s
 * applies to the URL it precedes. Each URL done writes a line "N bytes in ..."
 * on standard error; the first URL that fails ends the run with its status, so
 * the count of those lines says which one failed.
 *
 * -c checks a file already on the node instead (an image the swarm brought:
 * aria2c checked each piece's SHA-1 against the torrent, this checks the whole
 * file against the SHA-256 on the kernel command line), with the same exit
 * statuses and the same last line.
 *
 * Exit status: 0 the whole body arrived (and matched -s); 2 usage; 3 the
 * download failed (RETRIES attempts in a row made no progress, the server
 * refused with a 4xx, or answered something this program cannot continue
 * from); 4 the SHA-256 did not match; 5 the output could not be written (the
 * unpacker stopped reading); 6 the file changed on the server between two
 * attempts.
 *
 * When it ends on an HTTP status other than 200/206, the last line on standard
 * error is "imagebuild-fetch: HTTP <code> <reason-phrase>: <first line of the
 * body>" (at most 200 bytes of it, printable ASCII only; nothing after the
 * phrase when the body is empty; for a redirect, why it is not followed):
 * stage 1 passes the server's own reason on to the boot's failure. A 4xx is
 * final (asking again gets the same answer), except 408 and 429, which ask
 * for exactly that; 5xx and network errors are retried.
 *
 * -P connects from a privileged source port (512..1023, the first free one
 * from 1023 down, as rresvport(3) does; every attempt binds anew). The boot
 * server hands a node's secrets only to a request from such a port: on the
 * node only root can bind one, so a user process there cannot fetch the
 * node's host keys even from the node's own address. It needs root
 * (CAP_NET_BIND_SERVICE).
 *
 * -H adds a request header (at most 8, MAX_HEADERS; stage 1 sends the node's
 * SMBIOS values with the secrets request). CR or LF in one is a usage error:
 * it would let a value write headers of its own.
 *
 * Why a program of its own and not busybox wget: wget -c resumes only into a
 * file, so a one-pass load (download, verify and unpack at once, no compressed
 * copy in RAM) cannot resume with it; busybox's sha256sum runs at about
 * 200 MB/s, a sixth of a 10 Gbit/s link. Nettle's SHA-256 (the library
 * libarchive already uses; SHA-NI where the CPU has it) runs at well over
 * 1 GB/s. Plain HTTP/1.1 only: stage 1 has no certificate store, and the
 * digest on the kernel command line is what makes the bytes trustworthy.
 * Only GET with Content-Length or read-to-close bodies; chunked transfer
 * coding and redirects are refused with a clear message (a boot server or a
 * static web server never needs them for a file).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <nettle/sha2.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_USAGE = 2, EXIT_DOWNLOAD = 3, EXIT_DIGEST = 4, EXIT_OUTPUT = 5, EXIT_CHANGED = 6 };
enum { BUFFER_SIZE = 1 << 18, HEAD_LIMIT = 16 << 10, MAX_DELAY = 30, SLOTS = 8, MAX_URLS = 64 };
enum { MAX_HEADERS = 8, HEADER_LIMIT = 1024, REQUEST_LIMIT = 16 << 10, BODY_LINE_LIMIT = 200 };

static const char *program = "imagebuild-fetch";

static void vmessage(const char *format, va_list args) {
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
}

static void message(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vmessage(format, args);
    va_end(args);
}

static void die(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vmessage(format, args);
    va_end(args);
    exit(status);
}

/* ---- URL ---------------------------------------------------------------- */

struct url {
    char host[256];     /* as written, without brackets */
    char port[8];
    char authority[300]; /* the Host header: host[:port] as written */
    const char *path;   /* from the first '/', query included */
};

static void parse_url(const char *text, struct url *url) {
    if (strncmp(text, "http://", 7) != 0) {
        if (strncmp(text, "https://", 8) == 0)
            die(EXIT_USAGE, "%s: https is not supported in stage 1 (the sha256 on the command line protects the image; serve it over http)", text);
        die(EXIT_USAGE, "%s: not an http:// URL", text);
    }
    const char *authority = text + 7;
    const char *slash = strchr(authority, '/');
    size_t length = slash ? (size_t)(slash - authority) : strlen(authority);
    if (length == 0 || length >= sizeof url->authority) die(EXIT_USAGE, "%s: no host, or a host too long", text);
    memcpy(url->authority, authority, length);
    url->authority[length] = 0;
    url->path = slash ? slash : "/";
    for (const char *c = url->path; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f) die(EXIT_USAGE, "%s: a space or control character in the path", text);

    const char *host = url->authority, *port = NULL;
    size_t host_length;
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close) die(EXIT_USAGE, "%s: unclosed '[' in the host", text);
        host_length = (size_t)(close - host - 1);
        host++;
        if (close[1] == ':') port = close + 2;
        else if (close[1] != 0) die(EXIT_USAGE, "%s: junk after the IPv6 address", text);
    } else {
        const char *colon = strchr(host, ':');
        host_length = colon ? (size_t)(colon - host) : strlen(host);
        if (colon) port = colon + 1;
    }
    if (host_length == 0 || host_length >= sizeof url->host) die(EXIT_USAGE, "%s: bad host", text);
    memcpy(url->host, host, host_length);
    url->host[host_length] = 0;
    if (port) {
        if (*port == 0 || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) || atoi(port) < 1 || atoi(port) > 65535)
            die(EXIT_USAGE, "%s: bad port", text);
        strcpy(url->port, port);
    } else {
        strcpy(url->port, "80");
    }
}

/* ---- one connection ------------------------------------------------------ */

static int timeout_ms = 30000;

/* Waits until fd is ready for events; 0 when ready, -1 with a reason. */
static int wait_for(int fd, short events, const char **reason) {
    struct pollfd p = { .fd = fd, .events = events };
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n > 0) return 0;
        if (n == 0) { *reason = "timed out"; return -1; }
        if (errno != EINTR) { *reason = strerror(errno); return -1; }
    }
}

static int privileged = 0; /* -P */

/* Binds fd to the first free port from *port down to 512 (rresvport's range), leaving *port at it.
 * 0 when bound; -1 when every port is taken (worth another attempt); -2 when binding is refused. */
static int bind_privileged(int fd, int family, int *port, char *reason, size_t size) {
    for (; *port >= 512; (*port)--) {
        struct sockaddr_storage address = { .ss_family = (sa_family_t)family };
        socklen_t length;
        if (family == AF_INET6) {
            ((struct sockaddr_in6 *)&address)->sin6_port = htons((uint16_t)*port);
            length = sizeof(struct sockaddr_in6);
        } else {
            ((struct sockaddr_in *)&address)->sin_port = htons((uint16_t)*port);
            length = sizeof(struct sockaddr_in);
        }
        if (bind(fd, (struct sockaddr *)&address, length) == 0) return 0;
        if (errno == EADDRINUSE || errno == EADDRNOTAVAIL) continue;
        snprintf(reason, size, "-P: binding source port %d: %s%s", *port, strerror(errno),
                 errno == EACCES || errno == EPERM ? " (a privileged port needs root)" : "");
        return -2;
    }
    snprintf(reason, size, "-P: no free source port in 512-1023");
    return -1;
}

/* A connected socket; -1 with a reason (worth another attempt), -2 when no attempt can succeed. */
static int connect_to(const struct url *url, char *reason, size_t size) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *list = NULL;
    int status = getaddrinfo(url->host, url->port, &hints, &list);
    if (status != 0) { snprintf(reason, size, "%s: %s", url->host, gai_strerror(status)); return -1; }
    int fd = -1;
    snprintf(reason, size, "%s: no address", url->host);
    for (struct addrinfo *a = list; a && fd < 0; a = a->ai_next) {
        int port = 1023; /* -P: the next source port to try */
        for (;;) {
            fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
            if (fd < 0) { snprintf(reason, size, "socket: %s", strerror(errno)); break; }
            if (privileged) {
                int bound = bind_privileged(fd, a->ai_family, &port, reason, size);
                if (bound < 0) {
                    close(fd);
                    freeaddrinfo(list);
                    return bound;
                }
            }
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
            if (errno == EINPROGRESS) {
                const char *why = NULL;
                int error = 0;
                socklen_t length = sizeof error;
                if (wait_for(fd, POLLOUT, &why) == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0)
                    break;
                snprintf(reason, size, "connecting to %s port %s: %s", url->host, url->port, why ? why : strerror(error));
            } else {
                /* A bound port whose connection to this server is still in TIME_WAIT: the next port. */
                int retry = privileged && errno == EADDRNOTAVAIL && port > 512;
                snprintf(reason, size, "connecting to %s port %s: %s", url->host, url->port, strerror(errno));
                if (retry) { close(fd); port--; continue; }
            }
            close(fd);
            fd = -1;
            break;
        }
    }
    freeaddrinfo(list);
    return fd;
}

static int send_all(int fd, const char *bytes, size_t length, const char **reason) {
    while (length > 0) {
        ssize_t n = send(fd, bytes, length, MSG_NOSIGNAL);
        if (n > 0) { bytes += n; length -= (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(fd, POLLOUT, reason) != 0) return -1;
            continue;
        }
        *reason = strerror(errno);
        return -1;
    }
    return 0;
}

/* Reads once into buffer; >0 bytes, 0 at the end, -1 with a reason. */
static ssize_t receive(int fd, unsigned char *buffer, size_t size, const char **reason) {
    for (;;) {
        ssize_t n = recv(fd, buffer, size, 0);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_for(fd, POLLIN, reason) != 0) return -1;
            continue;
        }
        *reason = strerror(errno);
        return -1;
    }
}

/* ---- the transfer -------------------------------------------------------- */

/* -H, sent with every request */
static const char *headers[MAX_HEADERS];
static int header_count;

/* The URLs of this run, in order, and where the run is: the requests for the ones after the
 * current URL that name the same server go out with its own (pipelining). */
static struct url plan[MAX_URLS];
static int plan_count, plan_next;
/* Asking ahead stops for the rest of the run once it went wrong: a server that closed with requests
 * asked ahead unanswered (one without keep-alive may reset the connection, answer and all), or an
 * attempt that asked ahead and failed. Its retries then ask one URL at a time. */
static int pipelining = 1;
static int asked_ahead; /* the last attempt sent requests for the URLs after its own */

/* The connection kept open after a complete answer, for the next URL of the same server: how many
 * of the next URLs were already asked for on it, and the bytes read past the answer (the start of
 * the next one, which came in the same read). */
static int kept_fd = -1;
static char kept_authority[300];
static int kept_asked;
static char kept_carry[HEAD_LIMIT];
static size_t kept_carry_length;

static void drop_kept(void) {
    if (kept_fd >= 0) close(kept_fd);
    kept_fd = -1;
    kept_asked = 0;
    kept_carry_length = 0;
}

struct transfer {
    struct url url;
    int last;                /* the last URL: ask the server to close afterwards */
    int reused;              /* the answer came over the previous URL's connection */
    int out;                 /* where the body goes */
    uint64_t offset;         /* body bytes written to out (and hashed) */
    int64_t total;           /* the body's size, -1 while unknown */
    char validator[256];     /* the first answer's strong ETag or Last-Modified: the file's version */
    int validator_is_etag;
    struct sha256_ctx sha;
    unsigned resumes;
    int http_status;         /* the last attempt ended on this HTTP status (its reason is "HTTP ..."); else 0 */
};

/* What an attempt ended with: done, worth another attempt, or one of the final failures
 * (REFUSED: an HTTP status that asking again will not change). */
enum outcome { DONE, RETRY, FATAL, REFUSED, CHANGED, OUTPUT_FAILED };

/* The value of header `name` in head (a NUL-terminated block of "Name: value\r\n" lines), copied. */
static int header(const char *head, const char *name, char *value, size_t size) {
    size_t length = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *start = line + 2;
        if (strncasecmp(start, name, length) == 0 && start[length] == ':') {
            const char *v = start + length + 1;
            while (*v == ' ' || *v == '\t') v++;
            const char *end = strstr(v, "\r\n");
            size_t n = end ? (size_t)(end - v) : strlen(v);
            while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
            if (n >= size) n = size - 1;
            memcpy(value, v, n);
            value[n] = 0;
            return 1;
        }
    }
    return 0;
}

static int write_all(int fd, const unsigned char *bytes, size_t length) {
    while (length > 0) {
        ssize_t n = write(fd, bytes, length);
        if (n > 0) { bytes += n; length -= (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

/* ---- The hasher ------------------------------------------------------------
 * SHA-256 runs on a thread of its own, beside the one receiving and writing. At 10 Gbit/s the
 * hash alone takes about as long as the wire (Nettle with SHA-NI: 1.1 GB/s here), so hashing in
 * line nearly doubled a load; on two cores the two now overlap. The body is received straight into
 * one of SLOTS buffers, written out from there, and handed to the hasher, which frees the buffer
 * when it is done with it: no copy, and the bytes are hashed in the order they came. */

struct slot {
    unsigned char *buffer;      /* BUFFER_SIZE bytes */
    struct sha256_ctx *sha;     /* the transfer whose bytes these are */
    const unsigned char *data;  /* within buffer */
    size_t length;              /* 0: "finish": every earlier slot of sha is hashed */
};

static struct {
    struct slot slots[SLOTS];
    sem_t free_slots, full_slots, finished;
    unsigned next_full;         /* the hasher's next slot */
    unsigned next_free;         /* the receiver's next slot */
    int holding;                /* the receiver holds slots[next_free] (taken, not yet handed over) */
    int threaded;               /* 0: the thread could not start; hash in line */
} hasher;

static void *hasher_main(void *unused) {
    (void)unused;
    for (;;) {
        while (sem_wait(&hasher.full_slots) != 0) {}
        struct slot *s = &hasher.slots[hasher.next_full];
        hasher.next_full = (hasher.next_full + 1) % SLOTS;
        if (s->length > 0) {
            sha256_update(s->sha, s->length, s->data);
            sem_post(&hasher.free_slots);
        } else {
            sem_post(&hasher.free_slots);
            sem_post(&hasher.finished);
        }
    }
    return NULL;
}

static void hasher_start(void) {
    for (int i = 0; i < SLOTS; i++) {
        hasher.slots[i].buffer = malloc(BUFFER_SIZE);
        if (!hasher.slots[i].buffer) die(EXIT_DOWNLOAD, "out of memory");
    }
    sem_init(&hasher.free_slots, 0, SLOTS);
    sem_init(&hasher.full_slots, 0, 0);
    sem_init(&hasher.finished, 0, 0);
    pthread_t thread;
    hasher.threaded = pthread_create(&thread, NULL, hasher_main, NULL) == 0;
    if (hasher.threaded) pthread_detach(thread);
}

/* The buffer to receive the next bytes into (waits while every one is still being hashed). */
static unsigned char *hasher_buffer(void) {
    if (!hasher.holding) {
        if (hasher.threaded) while (sem_wait(&hasher.free_slots) != 0) {}
        hasher.holding = 1;
    }
    return hasher.slots[hasher.next_free].buffer;
}

static void hasher_hand_over(struct sha256_ctx *sha, const unsigned char *data, size_t length) {
    struct slot *s = &hasher.slots[hasher.next_free];
    s->sha = sha;
    s->data = data;
    s->length = length;
    hasher.holding = 0;
    hasher.next_free = (hasher.next_free + 1) % SLOTS;
    sem_post(&hasher.full_slots);
}

/* Hashes data[0..length) after every byte handed over before. The bytes may lie in the buffer
 * hasher_buffer() gave (then they are hashed there) or anywhere else (copied into one). */
static void hash_bytes(struct sha256_ctx *sha, const unsigned char *data, size_t length) {
    if (!hasher.threaded) { sha256_update(sha, length, data); return; }
    unsigned char *buffer = hasher_buffer();
    if (data < buffer || data >= buffer + BUFFER_SIZE) {
        memcpy(buffer, data, length); /* the body bytes that came with the head: at most HEAD_LIMIT */
        data = buffer;
    }
    hasher_hand_over(sha, data, length);
}

/* Returns once every byte handed over for sha is hashed. */
static void hash_wait(struct sha256_ctx *sha) {
    if (!hasher.threaded) return;
    hasher_buffer();
    hasher_hand_over(sha, NULL, 0);
    while (sem_wait(&hasher.finished) != 0) {}
}

/* A string built in a fixed buffer; overflow is remembered, never written past. */
struct text {
    char *data;
    size_t size, length;
    int overflow;
};

static void append(struct text *t, const char *format, ...) {
    if (t->overflow) return;
    va_list args;
    va_start(args, format);
    int n = vsnprintf(t->data + t->length, t->size - t->length, format, args);
    va_end(args);
    if (n < 0 || (size_t)n >= t->size - t->length) { t->overflow = 1; return; }
    t->length += (size_t)n;
}

/* bytes[0..length) with everything but printable ASCII dropped and the ends trimmed, into out:
 * what a server says goes onto a console and into a JSON report. */
static void printable(char *out, size_t size, const char *bytes, size_t length) {
    size_t n = 0;
    for (size_t i = 0; i < length && n + 1 < size; i++)
        if ((unsigned char)bytes[i] >= 0x20 && (unsigned char)bytes[i] < 0x7f && (n > 0 || bytes[i] != ' ')) out[n++] = bytes[i];
    while (n > 0 && out[n - 1] == ' ') n--;
    out[n] = 0;
}

/* The first line of an error answer's body, which says why (e.g. a refusal's reason), at most
 * BODY_LINE_LIMIT bytes: the body bytes that came with the head (head[start..have)), then more
 * only while the line is unfinished and the body goes on. A chunked body is read past its first
 * chunk-size line. */
static void first_body_line(int fd, const char *head, size_t have, size_t start, int chunked, char *out, size_t size) {
    char raw[BODY_LINE_LIMIT + 64];
    size_t n = have - start < sizeof raw ? have - start : sizeof raw;
    memcpy(raw, head + start, n);
    long long limit = -1; /* the body's length, when told */
    char value[64];
    if (!chunked && header(head, "Content-Length", value, sizeof value)) {
        char *stop = NULL;
        limit = strtoll(value, &stop, 10);
        if (*value == 0 || *stop != 0 || limit < 0) limit = -1;
    }
    if (limit >= 0 && (long long)n > limit) n = (size_t)limit;
    size_t line = 0; /* where the line starts in raw */
    int known = 1;   /* whether it is known (a chunked body's first chunk-size line has come) */
    for (;;) {
        if (chunked) {
            const char *eol = memmem(raw, n, "\r\n", 2);
            known = eol != NULL;
            if (eol) line = (size_t)(eol - raw) + 2;
        }
        if (known && (memchr(raw + line, '\n', n - line) || n - line >= BODY_LINE_LIMIT)) break;
        if (n == sizeof raw || (limit >= 0 && (long long)n >= limit)) break;
        size_t room = sizeof raw - n;
        if (limit >= 0 && (long long)room > limit - (long long)n) room = (size_t)(limit - (long long)n);
        const char *why = NULL;
        ssize_t got = receive(fd, (unsigned char *)raw + n, room, &why);
        if (got <= 0) break;
        n += (size_t)got;
    }
    if (!known) line = n;
    size_t length = 0;
    while (line + length < n && raw[line + length] != '\n' && length < BODY_LINE_LIMIT) length++;
    printable(out, size, raw + line, length);
}

/* A GET of `url` into r: from byte `offset` (with the version it must still be) when > 0. */
static void ask(struct text *r, const struct url *url, int last, uint64_t offset, const char *validator) {
    append(r, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: imagebuild-fetch\r\nAccept-Encoding: identity\r\nConnection: %s\r\n",
           url->path, url->authority, last ? "close" : "keep-alive");
    for (int i = 0; i < header_count; i++) append(r, "%s\r\n", headers[i]);
    if (offset > 0) {
        append(r, "Range: bytes=%llu-\r\n", (unsigned long long)offset);
        if (validator[0]) append(r, "If-Range: %s\r\n", validator);
    }
    append(r, "\r\n");
}

/* One attempt: connect (or take the kept connection), ask for the rest of the body, pass it on.
 * A kept connection the server closed meanwhile (before any byte of an answer) is replaced by a
 * new one at once: that is how keep-alive ends, not a failure; what was asked for ahead on it is
 * asked for again. */
static enum outcome attempt(struct transfer *t, char *reason, size_t reason_size) {
    t->http_status = 0;
    int reused = kept_fd >= 0 && strcmp(kept_authority, t->url.authority) == 0;
    t->reused = reused;
    int fd;
    int asked = 0; /* this URL's request went out with an earlier one's */
    int ahead = 0; /* requests for the URLs after this one sent on this connection */
    char head[HEAD_LIMIT + 1];
    size_t have = 0;
    if (reused) {
        fd = kept_fd;
        kept_fd = -1;
        asked = kept_asked > 0;
        ahead = asked ? kept_asked - 1 : 0;
        memcpy(head, kept_carry, kept_carry_length);
        have = kept_carry_length;
        kept_asked = 0;
        kept_carry_length = 0;
    } else {
        drop_kept();
        fd = connect_to(&t->url, reason, reason_size);
        if (fd == -2) return FATAL;
        if (fd < 0) return RETRY;
    }

    static char request[REQUEST_LIMIT];
    struct text r = { request, sizeof request, 0, 0 };
    if (!asked) {
        ask(&r, &t->url, t->last, t->offset, t->validator);
        if (r.overflow) { close(fd); die(EXIT_USAGE, "the request (URL and headers) is over %d bytes", REQUEST_LIMIT); }
        /* The next URLs of this server, each whole request or none, in the same write. */
        for (int j = plan_next; pipelining && !t->last && j < plan_count && strcmp(plan[j].authority, t->url.authority) == 0; j++) {
            size_t before = r.length;
            ask(&r, &plan[j], j == plan_count - 1, 0, "");
            if (r.overflow) { r.length = before; break; }
            ahead++;
        }
    }
    asked_ahead = asked || ahead > 0;
    const char *why = NULL;
    if (!asked && send_all(fd, request, r.length, &why) != 0) {
        close(fd);
        if (reused) return attempt(t, reason, reason_size);
        snprintf(reason, reason_size, "sending the request: %s", why);
        return RETRY;
    }

    /* The head: read until the blank line; what follows it is body. */
    head[have] = 0;
    char *end = have > 0 ? memmem(head, have, "\r\n\r\n", 4) : NULL;
    while (!end) {
        if (have == HEAD_LIMIT) { snprintf(reason, reason_size, "the answer's head is over %d bytes", HEAD_LIMIT); close(fd); return RETRY; }
        ssize_t n = receive(fd, (unsigned char *)head + have, HEAD_LIMIT - have, &why);
        if (n <= 0) {
            close(fd);
            if (reused && have == 0) {
                if (asked) pipelining = 0; /* closed with this request asked ahead and unanswered */
                return attempt(t, reason, reason_size);
            }
            snprintf(reason, reason_size, "reading the answer: %s", n == 0 ? "connection closed" : why);
            return RETRY;
        }
        have += (size_t)n;
        head[have] = 0;
        end = memmem(head, have, "\r\n\r\n", 4);
    }
    size_t head_length = (size_t)(end - head) + 4;
    size_t early = have - head_length; /* body bytes that came with the head */
    end[2] = 0; /* keep the last header's CRLF for header() */

    int status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(reason, reason_size, "not an HTTP answer");
        close(fd);
        return RETRY;
    }
    char value[256];
    int chunked = header(head, "Transfer-Encoding", value, sizeof value) && strcasecmp(value, "identity") != 0;
    if (status != 200 && status != 206) {
        /* "HTTP <code> <reason-phrase>", then the server's word: the body's first line, or why a redirect is not followed. */
        char phrase[64] = "";
        const char *text = head + strcspn(head, " ");
        text += strspn(text, " ");
        text += strspn(text, "0123456789");
        printable(phrase, sizeof phrase, text, strcspn(text, "\r\n"));
        char said[BODY_LINE_LIMIT + 1] = "";
        int redirect = status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
        if (redirect)
            snprintf(said, sizeof said, "redirects are not followed; give the final URL (%s)",
                     header(head, "Location", value, sizeof value) ? value : "no Location");
        else
            first_body_line(fd, head, head_length + early, head_length, chunked, said, sizeof said);
        snprintf(reason, reason_size, "HTTP %d%s%s%s%s", status, phrase[0] ? " " : "", phrase, said[0] ? ": " : "", said);
        close(fd);
        t->http_status = status;
        if (redirect || (status >= 400 && status <= 499 && status != 408 && status != 429)) return REFUSED;
        return RETRY;
    }
    if (chunked) {
        snprintf(reason, reason_size, "the server sent Transfer-Encoding: %s; serve the image as a plain file", value);
        close(fd);
        return FATAL;
    }

    /* This answer's version of the file. */
    char version[256] = "";
    int version_is_etag = 0;
    if (header(head, "ETag", value, sizeof value) && strncmp(value, "W/", 2) != 0) {
        snprintf(version, sizeof version, "%s", value);
        version_is_etag = 1;
    } else if (header(head, "Last-Modified", value, sizeof value)) {
        snprintf(version, sizeof version, "%s", value);
    }
    if (t->offset > 0 && t->validator[0] && version[0] &&
        (version_is_etag != t->validator_is_etag || strcmp(version, t->validator) != 0)) {
        snprintf(reason, reason_size, "the file changed on the server after %llu bytes (%s, was %s); start the boot again",
                 (unsigned long long)t->offset, version, t->validator);
        close(fd);
        return CHANGED;
    }

    uint64_t skip = 0; /* bytes of this body already passed on */
    int64_t body_length = -1;
    if (header(head, "Content-Length", value, sizeof value)) {
        char *stop = NULL;
        long long n = strtoll(value, &stop, 10);
        if (*value == 0 || *stop != 0 || n < 0) { snprintf(reason, reason_size, "bad Content-Length '%s'", value); close(fd); return RETRY; }
        body_length = n;
    }
    if (status == 206) {
        unsigned long long first, last, size;
        if (!header(head, "Content-Range", value, sizeof value) || sscanf(value, "bytes %llu-%llu/%llu", &first, &last, &size) != 3) {
            snprintf(reason, reason_size, "a 206 answer without a usable Content-Range");
            close(fd);
            return FATAL;
        }
        if (first != t->offset || last + 1 != size) {
            snprintf(reason, reason_size, "asked for bytes %llu- and got %llu-%llu/%llu", (unsigned long long)t->offset, first, last, size);
            close(fd);
            return FATAL;
        }
        if (t->total >= 0 && (int64_t)size != t->total) {
            snprintf(reason, reason_size, "the file changed on the server after %llu bytes (size %llu, was %lld)",
                     (unsigned long long)t->offset, size, (long long)t->total);
            close(fd);
            return CHANGED;
        }
        t->total = (int64_t)size;
    } else {
        /* 200: the whole file again (no Range sent, or the server ignores it): skip what we have. */
        if (t->offset > 0 && t->total >= 0 && body_length >= 0 && body_length != t->total) {
            snprintf(reason, reason_size, "the file changed on the server after %llu bytes (size %lld, was %lld)",
                     (unsigned long long)t->offset, (long long)body_length, (long long)t->total);
            close(fd);
            return CHANGED;
        }
        skip = t->offset;
        t->total = body_length;
    }
    if (t->offset == 0 && version[0]) {
        snprintf(t->validator, sizeof t->validator, "%s", version);
        t->validator_is_etag = version_is_etag;
    }

    /* The body. Never read past it: what follows is the next answer asked for ahead. */
    int64_t wire_left = body_length; /* this answer's body bytes not read yet; -1: up to the close */
    unsigned char *data = (unsigned char *)head + head_length;
    size_t count = early;
    if (wire_left >= 0 && (int64_t)count > wire_left) {
        if (ahead > 0) {
            kept_carry_length = count - (size_t)wire_left;
            memcpy(kept_carry, data + wire_left, kept_carry_length);
        }
        count = (size_t)wire_left;
    }
    for (;;) {
        if (wire_left >= 0) wire_left -= (int64_t)count;
        if (count > 0) {
            if (skip > 0) {
                size_t drop = count < skip ? count : (size_t)skip;
                skip -= drop;
                data += drop;
                count -= drop;
            }
            if (t->total >= 0 && t->offset + count > (uint64_t)t->total) count = (size_t)((uint64_t)t->total - t->offset);
            if (count > 0) {
                hash_bytes(&t->sha, data, count);
                if (write_all(t->out, data, count) != 0) {
                    snprintf(reason, reason_size, "writing the output: %s", errno == EPIPE ? "the reader stopped (the unpacker failed?)" : strerror(errno));
                    close(fd);
                    return OUTPUT_FAILED;
                }
                t->offset += count;
            }
        }
        if (t->total >= 0 && t->offset == (uint64_t)t->total) break;
        if (wire_left == 0) {
            snprintf(reason, reason_size, "the answer ended at byte %llu of %lld", (unsigned long long)t->offset, (long long)t->total);
            close(fd);
            return RETRY;
        }
        unsigned char *buffer = hasher_buffer();
        size_t want = wire_left >= 0 && wire_left < BUFFER_SIZE ? (size_t)wire_left : BUFFER_SIZE;
        ssize_t n = receive(fd, buffer, want, &why);
        if (n == 0) {
            if (t->total < 0) break; /* read to close: the digest says whether it is whole */
            snprintf(reason, reason_size, "connection closed at byte %llu of %lld", (unsigned long long)t->offset, (long long)t->total);
            close(fd);
            return RETRY;
        }
        if (n < 0) {
            snprintf(reason, reason_size, "at byte %llu of %lld: %s", (unsigned long long)t->offset, (long long)t->total, why);
            close(fd);
            return RETRY;
        }
        data = buffer;
        count = (size_t)n;
    }
    /* Kept for the next URL when the answer's end was known and the server did not say close. */
    if (!t->last && t->total >= 0 && body_length >= 0 && !(header(head, "Connection", value, sizeof value) && strcasecmp(value, "close") == 0)) {
        kept_fd = fd;
        kept_asked = ahead;
        snprintf(kept_authority, sizeof kept_authority, "%s", t->url.authority);
    } else {
        close(fd); /* what was carried goes with the next connection's drop_kept() */
        if (ahead > 0) pipelining = 0; /* the server closes after an answer: ask one at a time */
    }
    return DONE;
}

static double seconds_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static void usage(void) {
    fprintf(stderr,
            "usage: %s [-r RETRIES] [-t SECONDS] [-P] [-H 'Name: value']... [-o FILE] [-s SHA256] URL\n"
            "                        [[-o FILE] [-s SHA256] URL]...\n"
            "       %s -c FILE -s SHA256\n"
            "Streams URL (plain http) to standard output or FILE in one pass, hashing it with SHA-256;\n"
            "a broken connection continues from the byte it reached (HTTP Range). Several URLs are\n"
            "fetched in order over one kept-alive connection, all asked for in its first write\n"
            "(pipelining), each but the last into its own -o FILE.\n"
            "  -o FILE     write the next URL to FILE instead of standard output\n"
            "  -s SHA256   the next URL's expected digest (64 hex digits): exit 4 when its body does not match\n"
            "  -r RETRIES  attempts in a row without progress before giving up (default 8; back-off 1, 2, 4 ... 30 s)\n"
            "  -t SECONDS  time-out for connecting and for each read (default 30)\n"
            "  -P          connect from a privileged source port (512-1023; needs root)\n"
            "  -H HEADER   add a request header 'Name: value' (at most %d)\n"
            "  -c FILE     check FILE (already here, e.g. from the swarm) against -s instead of downloading\n"
            "A 4xx answer is final (but 408 and 429); the last line then says 'HTTP <code> <phrase>: <the body's first line>'.\n"
            "Exit: 0 done, 2 usage, 3 download failed, 4 digest mismatch, 5 output failed, 6 file changed on the server.\n",
            program, program, MAX_HEADERS);
    exit(EXIT_USAGE);
}

/* -c: hashes `path` and compares it with `expected`; exits as a download would. */
static int check_file(const char *path, const char *expected) {
    struct sha256_ctx sha;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    sha256_init(&sha);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(EXIT_DOWNLOAD, "%s: %s", path, strerror(errno));
    uint64_t total = 0;
    for (;;) {
        unsigned char *buffer = hasher_buffer();
        ssize_t n = read(fd, buffer, BUFFER_SIZE);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die(EXIT_DOWNLOAD, "%s: %s", path, strerror(errno));
        if (n == 0) break;
        hash_bytes(&sha, buffer, (size_t)n);
        total += (uint64_t)n;
    }
    close(fd);
    uint8_t digest[SHA256_DIGEST_SIZE];
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    hash_wait(&sha);
    sha256_digest(&sha, sizeof digest, digest);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    if (strcasecmp(expected, hex) != 0)
        die(EXIT_DIGEST, "sha256 mismatch after %llu bytes: expected %s, got %s (corrupt or wrong file)",
            (unsigned long long)total, expected, hex);
    double elapsed = seconds_since(&start);
    message("%llu bytes checked in %.1f s (%.0f MB/s), sha256 %s OK", (unsigned long long)total, elapsed,
            elapsed > 0 ? (double)total / elapsed / 1e6 : 0.0, hex);
    return 0;
}

/* One URL, retried as -r says; exits (with its status and last line) when it fails. */
static void fetch(const char *text, const char *output, const char *expected, int last, long retries) {
    static struct transfer t;
    memset(&t, 0, sizeof t);
    parse_url(text, &t.url);
    t.last = last;
    t.total = -1;
    sha256_init(&t.sha);
    t.out = STDOUT_FILENO;
    if (output) {
        t.out = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (t.out < 0) die(EXIT_OUTPUT, "%s: %s", output, strerror(errno));
    }
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long failures = 0;
    unsigned delay = 1;
    char reason[512];
    for (;;) {
        uint64_t before = t.offset;
        enum outcome outcome = attempt(&t, reason, sizeof reason);
        if (outcome == DONE) break;
        if (asked_ahead) pipelining = 0;
        if (outcome == FATAL) die(EXIT_DOWNLOAD, "%s: %s", text, reason);
        if (outcome == REFUSED) {
            message("%s: answered %d, which is final: not retried", text, t.http_status);
            die(EXIT_DOWNLOAD, "%s", reason); /* "HTTP <code> <phrase>: ...", the last line */
        }
        if (outcome == CHANGED) die(EXIT_CHANGED, "%s: %s", text, reason);
        if (outcome == OUTPUT_FAILED) die(EXIT_OUTPUT, "%s", reason);
        if (t.offset > before) { failures = 0; delay = 1; }
        failures++;
        if (failures >= retries && t.http_status) {
            message("%s: %ld attempts in a row failed", text, failures);
            die(EXIT_DOWNLOAD, "%s", reason); /* "HTTP <code> <phrase>: ...", the last line */
        }
        if (failures >= retries)
            die(EXIT_DOWNLOAD, "%s: %ld attempts in a row failed, the last: %s", text, failures, reason);
        message("%s; continuing from byte %llu in %u s (%ld of %ld attempts in a row without progress)",
                reason, (unsigned long long)t.offset, delay, failures, retries);
        if (t.offset > 0) t.resumes++;
        sleep(delay);
        delay = delay * 2 > MAX_DELAY ? MAX_DELAY : delay * 2;
    }
    if (output && close(t.out) != 0) die(EXIT_OUTPUT, "%s: %s", output, strerror(errno));

    uint8_t digest[SHA256_DIGEST_SIZE];
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    hash_wait(&t.sha);
    sha256_digest(&t.sha, sizeof digest, digest);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    double elapsed = seconds_since(&start);
    if (expected && strcasecmp(expected, hex) != 0)
        die(EXIT_DIGEST, "sha256 mismatch after %llu bytes: expected %s, got %s (corrupt or wrong file)",
            (unsigned long long)t.offset, expected, hex);
    message("%llu bytes in %.1f s (%.0f MB/s), %u resumed, sha256 %s%s%s", (unsigned long long)t.offset, elapsed,
            elapsed > 0 ? (double)t.offset / elapsed / 1e6 : 0.0, t.resumes, hex, expected ? " OK" : " (not checked)",
            t.reused ? ", over the previous URL's connection" : "");
}

static void check_digest_option(const char *expected) {
    if (expected && (strlen(expected) != 64 || strspn(expected, "0123456789abcdefABCDEF") != 64))
        die(EXIT_USAGE, "-s: a SHA-256 is 64 hex digits, not '%s'", expected);
}

int main(int argc, char **argv) {
    const char *check = NULL;
    long retries = 8;
    /* Per URL: its -o and -s, given before it. */
    const char *urls[MAX_URLS], *outputs[MAX_URLS] = { 0 }, *digests[MAX_URLS] = { 0 };
    int count = 0;
    const char *output = NULL, *expected = NULL;
    int option;
    for (;;) {
        /* '+': stop at each URL, so the options after it belong to the next one */
        option = getopt(argc, argv, "+o:s:r:t:PH:c:h");
        if (option == -1) {
            if (optind >= argc) break;
            if (count == MAX_URLS) die(EXIT_USAGE, "at most %d URLs", MAX_URLS);
            urls[count] = argv[optind++];
            outputs[count] = output;
            digests[count] = expected;
            count++;
            output = expected = NULL;
            continue;
        }
        char *stop = NULL;
        if (count > 0 && option != 'o' && option != 's') die(EXIT_USAGE, "-%c: give it before the first URL (only -o and -s are per URL)", option);
        switch (option) {
        case 'o': output = optarg; break;
        case 'c': check = optarg; break;
        case 'P': privileged = 1; break;
        case 'H': {
            if (strpbrk(optarg, "\r\n")) die(EXIT_USAGE, "-H: a header may not contain CR or LF");
            size_t name = strcspn(optarg, ":");
            if (name == 0 || optarg[name] != ':' || strcspn(optarg, " \t") < name)
                die(EXIT_USAGE, "-H: a header is 'Name: value', not '%s'", optarg);
            if (strlen(optarg) > HEADER_LIMIT) die(EXIT_USAGE, "-H: a header of at most %d bytes", HEADER_LIMIT);
            if (header_count == MAX_HEADERS) die(EXIT_USAGE, "-H: at most %d headers", MAX_HEADERS);
            headers[header_count++] = optarg;
            break;
        }
        case 's': expected = optarg; break;
        case 'r':
            retries = strtol(optarg, &stop, 10);
            if (*optarg == 0 || *stop != 0 || retries < 1 || retries > 1000) die(EXIT_USAGE, "-r: 1 to 1000 attempts, not '%s'", optarg);
            break;
        case 't': {
            long seconds = strtol(optarg, &stop, 10);
            if (*optarg == 0 || *stop != 0 || seconds < 1 || seconds > 3600) die(EXIT_USAGE, "-t: 1 to 3600 seconds, not '%s'", optarg);
            timeout_ms = (int)seconds * 1000;
            break;
        }
        default: usage();
        }
    }
    if (check) {
        if (count != 0 || !expected || output) usage();
        check_digest_option(expected);
        hasher_start();
        return check_file(check, expected);
    }
    if (count == 0 || output || expected) usage(); /* no URL, or -o/-s after the last one */
    for (int i = 0; i < count; i++) {
        check_digest_option(digests[i]);
        if (count > 1 && !outputs[i] && i < count - 1) die(EXIT_USAGE, "%s: with several URLs, each but the last needs its own -o FILE", urls[i]);
    }
    signal(SIGPIPE, SIG_IGN); /* a closed pipe is EPIPE from write: exit 5 with a message */
    hasher_start();
    for (int i = 0; i < count; i++) parse_url(urls[i], &plan[i]);
    plan_count = count;
    for (int i = 0; i < count; i++) {
        plan_next = i + 1;
        fetch(urls[i], outputs[i], digests[i], i == count - 1, retries);
    }
    drop_kept();
    return 0;
}
