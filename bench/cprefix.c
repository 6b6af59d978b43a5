/* cprefix: the yardstick. The smallest honest prefixing forwarder: one
 * poll(2) loop over the daemons' pipes that writes `[name] line\n` for
 * every line, forwards SIGTERM/SIGINT and exits once every pipe is at EOF.
 *
 *   cprefix PROCFILE     (lines `name: argv...`, words split on blanks only)
 *
 * CPREFIX_PIPE_SIZE=BYTES sets the daemons' pipe capacity (F_SETPIPE_SZ).
 *
 * No line limit beyond 64 KiB pieces, no UTF-8 repair, blocking writes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXD 4096
#define PIECE 65536

static struct { pid_t pid; char pre[80]; size_t plen; char *part; size_t np; } d[MAXD];
static struct pollfd fds[MAXD];
static int nd;
static char in[PIECE], out[1 << 20];
static size_t nout;

static void onterm(int sig) {
    for (int i = 0; i < nd; i++) kill(d[i].pid, sig);
}

static void flush(void) {
    for (size_t o = 0; o < nout;) {
        ssize_t w = write(1, out + o, nout - o);
        if (w > 0) o += (size_t)w; else if (w < 0 && errno != EINTR) exit(1);
    }
    nout = 0;
}

/* Appends `[name] ` + the held piece + line + '\n'. */
static void emit(int i, const char *p, size_t n) {
    if (nout + d[i].plen + d[i].np + n + 1 > sizeof out) flush();
    memcpy(out + nout, d[i].pre, d[i].plen), nout += d[i].plen;
    memcpy(out + nout, d[i].part, d[i].np), nout += d[i].np;
    memcpy(out + nout, p, n), nout += n;
    out[nout++] = '\n';
    d[i].np = 0;
}

int main(int argc, char **argv) {
    FILE *f = argc == 2 ? fopen(argv[1], "r") : NULL;
    if (!f) { fprintf(stderr, "usage: cprefix PROCFILE\n"); return 2; }
    static char text[8192];
    int pipe_size = getenv("CPREFIX_PIPE_SIZE") ? atoi(getenv("CPREFIX_PIPE_SIZE")) : 0;
    while (nd < MAXD && fgets(text, sizeof text, f)) {
        char *colon = strchr(text, ':'), *args[256], *w;
        int na = 0;
        if (text[0] == '#' || !colon) continue;
        *colon = 0;
        for (w = strtok(colon + 1, " \t\n"); w && na < 255; w = strtok(NULL, " \t\n")) args[na++] = w;
        args[na] = NULL;
        int p[2];
        if (na == 0 || pipe2(p, O_CLOEXEC) < 0) return 1;
        if (pipe_size > 0) fcntl(p[0], F_SETPIPE_SZ, pipe_size);
        if ((d[nd].pid = fork()) == 0) {
            dup2(p[1], 1), dup2(p[1], 2);
            execvp(args[0], args);
            _exit(127);
        }
        close(p[1]);
        d[nd].plen = (size_t)snprintf(d[nd].pre, sizeof d[nd].pre, "[%s] ", text);
        d[nd].part = malloc(PIECE);
        fds[nd].fd = p[0], fds[nd].events = POLLIN;
        nd++;
    }
    struct sigaction sa = {.sa_handler = onterm};
    sigaction(SIGTERM, &sa, NULL), sigaction(SIGINT, &sa, NULL);
    for (int open = nd; open > 0;) {
        if (poll(fds, (nfds_t)nd, -1) < 0) continue; /* EINTR */
        for (int i = 0; i < nd; i++) {
            if (!fds[i].revents) continue;
            ssize_t n = read(fds[i].fd, in, sizeof in);
            if (n <= 0) {
                if (d[i].np) emit(i, "", 0);
                close(fds[i].fd), fds[i].fd = -1, open--;
                continue;
            }
            char *p = in, *end = in + n, *nl;
            while ((nl = memchr(p, '\n', (size_t)(end - p)))) emit(i, p, (size_t)(nl - p)), p = nl + 1;
            for (; p < end; p++) { /* keep the unfinished line, in pieces of at most 64 KiB */
                if (d[i].np == PIECE) emit(i, "", 0);
                size_t k = (size_t)(end - p) < PIECE - d[i].np ? (size_t)(end - p) : PIECE - d[i].np;
                memcpy(d[i].part + d[i].np, p, k), d[i].np += k, p += k - 1;
            }
        }
        flush();
    }
    while (wait(NULL) > 0) {}
    return 0;
}
