/* A daemon for the readiness benchmarks (bench/run, section "ready").
 *
 *   readyd notify        send READY=1 to $NOTIFY_SOCKET, then say `up NS`
 *   readyd line          say `ready`, then `up NS`
 *   readyd listen PORT   listen on 127.0.0.1:PORT at once, say `listening NS`
 *   readyd up            just say `up NS`
 *
 * NS is CLOCK_MONOTONIC in nanoseconds when the daemon ran (the same clock
 * as Python's time.monotonic_ns()), so the benchmark can tell when each one
 * started. Then it sleeps until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        fprintf(stderr, "readyd: no NOTIFY_SOCKET\n");
        exit(1);
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof addr.sun_path) exit(1);
    memcpy(addr.sun_path, path, n);
    if (path[0] == '@') addr.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const char msg[] = "READY=1\n";
    if (fd < 0 || sendto(fd, msg, sizeof msg - 1, 0, (struct sockaddr *)&addr,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0) {
        perror("readyd: sendto");
        exit(1);
    }
    close(fd);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "up";
    long long t = now_ns();
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(mode, "notify")) {
        notify_ready();
        printf("up %lld\n", t);
    } else if (!strcmp(mode, "line")) {
        printf("ready\nup %lld\n", t);
    } else if (!strcmp(mode, "listen") && argc > 2) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) {
            perror("readyd: listen");
            return 1;
        }
        printf("listening %lld\n", now_ns());
    } else {
        printf("up %lld\n", t);
    }
    for (;;) pause();
}
