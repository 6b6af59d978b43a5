/* gen: the benchmark's daemon. Writes checkable lines to stdout as fast as
 * the pipe takes them.
 *
 *   gen -i ID -n LINES [-l LEN] [-w BYTES] [-p] [-x FILE]
 *   gen -z [-w BYTES]
 *
 * Every line is exactly LEN bytes (default 100) including its '\n':
 *
 *   IIII SSSSSSSSSS abcdef...\n
 *
 * IIII is the daemon id (4 digits), SSSSSSSSSS the line's sequence number
 * (10 digits, from 0), then padding: the alphabet repeated, starting at
 * letter SEQ % 26. meter.c recomputes every line, so a lost, duplicated,
 * reordered or garbled line is detected.
 *
 *   -n LINES  lines to write; 0 = forever
 *   -w BYTES  bytes per write(2). 0 (default): as many whole lines as fit in
 *             64 KiB, so no write splits a line. Otherwise exactly BYTES per
 *             write, so lines straddle the chunk boundaries.
 *   -p        after the last line, wait for a signal (a daemon that stays up)
 *   -x FILE   after the last write, store CLOCK_MONOTONIC (ns) in FILE
 *   -z        one endless line: 'x' forever, no newline
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define MAXLEN 4096
#define HEAD 16 /* "IIII SSSSSSSSSS " */

static void write_all(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(1, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            exit(1); /* EPIPE and friends: the reader is gone */
        }
        p += w;
        n -= (size_t)w;
    }
}

static void die(const char *msg) {
    fprintf(stderr, "gen: %s\n", msg);
    exit(2);
}

int main(int argc, char **argv) {
    long id = 0, len = 100, wsize = 0;
    uint64_t lines = 0;
    int stay = 0, endless = 0;
    const char *exitfile = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "i:n:l:w:px:z")) != -1) {
        switch (opt) {
        case 'i': id = atol(optarg); break;
        case 'n': lines = strtoull(optarg, NULL, 10); break;
        case 'l': len = atol(optarg); break;
        case 'w': wsize = atol(optarg); break;
        case 'p': stay = 1; break;
        case 'x': exitfile = optarg; break;
        case 'z': endless = 1; break;
        default: die("usage: gen -i ID -n LINES [-l LEN] [-w BYTES] [-p] [-x FILE] | gen -z");
        }
    }
    if (len < HEAD + 2 || len > MAXLEN) die("-l must be 18..4096");
    if (id < 0 || id > 9999) die("-i must be 0..9999");
    if (wsize < 0 || wsize > CHUNK) die("-w must be 0..65536");

    static char buf[CHUNK];
    if (endless) {
        size_t n = wsize ? (size_t)wsize : CHUNK;
        memset(buf, 'x', n);
        for (;;) write_all(buf, n);
    }
    size_t chunk = wsize ? (size_t)wsize : (CHUNK / (size_t)len) * (size_t)len;

    /* The current line, updated in place: the sequence number is counted in
     * ASCII and the padding is copied from a pattern at offset SEQ % 26. */
    size_t pad = (size_t)len - HEAD - 1;
    char pattern[MAXLEN + 26];
    for (size_t i = 0; i < pad + 26; i++) pattern[i] = (char)('a' + i % 26);
    char line[MAXLEN];
    snprintf(line, sizeof line, "%04ld %010d ", id, 0);
    line[len - 1] = '\n';
    unsigned rot = 0;

    size_t fill = 0;    /* bytes in buf */
    size_t off = 0;     /* bytes of `line` already copied out */
    uint64_t seq = 0;
    memcpy(line + HEAD, pattern, pad);
    while (lines == 0 || seq < lines) {
        size_t n = (size_t)len - off;
        if (n > chunk - fill) n = chunk - fill;
        memcpy(buf + fill, line + off, n);
        fill += n;
        off += n;
        if (fill == chunk) {
            write_all(buf, fill);
            fill = 0;
        }
        if (off == (size_t)len) {
            off = 0;
            seq++;
            for (int d = HEAD - 2; d >= 5; d--) { /* ASCII increment */
                if (line[d] != '9') { line[d]++; break; }
                line[d] = '0';
            }
            rot = rot == 25 ? 0 : rot + 1;
            memcpy(line + HEAD, pattern + rot, pad);
        }
    }
    if (fill) write_all(buf, fill);

    if (exitfile) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        FILE *f = fopen(exitfile, "w");
        if (f) {
            fprintf(f, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
            fclose(f);
        }
    }
    if (stay)
        for (;;) pause();
    return 0;
}
