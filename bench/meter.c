/* meter: runs one forwarder (or a pipeline ending in one), reads its stdout
 * to EOF, checks every line and times what the benchmark asks for. Prints
 * `key=value` lines on stdout; bench/run parses them.
 *
 *   meter [OPTIONS] -- CMD ARGS... [ '|' CMD ARGS... ]...
 *
 * The stages of a pipeline are connected stdout to stdin; the first reads
 * /dev/null; the last one (the "forwarder") writes into meter's pipe. meter
 * is a child subreaper, so whatever a forwarder leaves behind is reaped and,
 * at the end, killed.
 *
 *   -v MODE   none: count bytes only (no line scanning; fastest)
 *             lines: find lines, tell own (`sidecar-init: ...`) from others
 *             prefixed: every other line must be `[dID] ` + a gen line
 *             raw: every line must be a gen line (no prefix)
 *   -d D      daemons expected: ids 0..D-1       -n N  lines per daemon
 *   -H K      ids 0..K-1 are hogs: unbounded, not counted as complete
 *   -l LEN    gen line length (default 100)
 *   -T K      after K daemon lines, SIGTERM the forwarder (term_ms)
 *   -C        once every non-hog daemon is complete, SIGTERM the forwarder
 *   -S SECS   after SECS, sample the forwarder's VmHWM and SIGTERM it
 *   -I W,S    idle: after W s sample the forwarder's context switches and
 *             CPU time (all threads), again S s later; then SIGTERM it
 *   -R BPS    read at most BPS bytes/s (a slow log reader) until -S fires
 *   -x FILE   a daemon stores its exit time there: after_exit_ms
 *   -W SECS   give up after SECS: SIGTERM, 2 s later SIGKILL (timeout=1)
 *   -P OUT[,IN]  pipe capacities (F_SETPIPE_SZ): OUT for the forwarder's
 *             stdout, IN for the pipes between stages; default: the kernel's
 *
 * Times are CLOCK_MONOTONIC, in ms from just before the first fork.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ (1 << 20)
#define MAXLEN 4096
#define HEAD 16
#define NEVER INT64_MAX

enum { M_NONE, M_LINES, M_PREFIXED, M_RAW };

static int mode = M_NONE;
static long ndaemons, hogs, len = 100;
static uint64_t nlines;
static int64_t t0;

/* Results. */
static uint64_t bytes, nl_lines, own, ok, garbled, order, extra, cut, dlines;
static int last_is_own;
static int64_t t_first = -1;
static char last_own[256], bad_sample[256];

/* Per daemon: next expected sequence number, first-line and done times. */
static uint64_t *next_seq;
static int64_t *first_at, *done_at;
static long complete;
static char pattern[MAXLEN + 26];
static size_t pad;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double ms(int64_t ns) { return (double)ns / 1e6; }

static void die(const char *msg) {
    fprintf(stderr, "meter: %s\n", msg);
    exit(2);
}

/* Reads a fixed-width decimal field; -1 if any character is not a digit. */
static int64_t digits(const char *p, int n) {
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static void sample_bad(const char *p, size_t n) {
    if (bad_sample[0]) return;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < sizeof bad_sample; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 32 && c < 127 && c != '\\') bad_sample[o++] = (char)c;
        else o += (size_t)snprintf(bad_sample + o, 5, "\\x%02x", c);
    }
    bad_sample[o] = 0;
}

/* Checks one gen line `body` (without '\n') claimed by daemon `want`
 * (-1: take the id from the line). Returns 0 if it is garbled. */
static int check_body(const char *body, size_t n, long want, int64_t now) {
    int64_t id = n >= 4 ? digits(body, 4) : -1;
    if (id < 0 || id >= ndaemons || (want >= 0 && id != want)) return 0;
    if (n < (size_t)len - 1) {
        /* A hog killed in the middle of a write leaves a cut last line. */
        if (id < hogs) { cut++; return 1; }
        return 0;
    }
    if (n != (size_t)len - 1 || body[4] != ' ' || body[HEAD - 1] != ' ') return 0;
    int64_t seq = digits(body + 5, 10);
    if (seq < 0 || memcmp(body + HEAD, pattern + seq % 26, pad) != 0) return 0;
    ok++;
    if (first_at[id] < 0) first_at[id] = now;
    if ((uint64_t)seq != next_seq[id]) {
        order++;
        if ((uint64_t)seq < next_seq[id]) return 1;
    }
    next_seq[id] = (uint64_t)seq + 1;
    if (id >= hogs && nlines) {
        if (next_seq[id] == nlines) {
            done_at[id] = now;
            complete++;
        } else if (next_seq[id] > nlines) {
            extra++;
        }
    }
    return 1;
}

static void on_line(const char *p, size_t n, int64_t now) {
    nl_lines++;
    last_is_own = n >= 14 && memcmp(p, "sidecar-init: ", 14) == 0;
    if (last_is_own) {
        own++;
        size_t k = n < sizeof last_own - 1 ? n : sizeof last_own - 1;
        memcpy(last_own, p, k);
        last_own[k] = 0;
        return;
    }
    dlines++;
    if (t_first < 0) t_first = now;
    if (mode == M_LINES) return;
    int good = 0;
    if (mode == M_RAW) {
        good = check_body(p, n, -1, now);
    } else if (n > 4 && p[0] == '[' && p[1] == 'd') {
        const char *q = p + 2, *end = p + n;
        long id = 0;
        while (q < end && *q >= '0' && *q <= '9' && id < 100000) id = id * 10 + (*q++ - '0');
        if (q + 1 < end && q > p + 2 && q[0] == ']' && q[1] == ' ')
            good = check_body(q + 2, (size_t)(end - q - 2), id, now);
    }
    if (!good) {
        garbled++;
        sample_bad(p, n);
    }
}

/* Sums voluntary+nonvoluntary context switches and run time (ns) over the
 * threads of `pid`; reads VmRSS/VmHWM (kB) of the process. */
static void proc_sample(pid_t pid, uint64_t *switches, uint64_t *cpu_ns, long *rss, long *hwm) {
    char path[300], text[4096];
    *switches = *cpu_ns = 0;
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/status", pid, e->d_name);
        FILE *f = fopen(path, "r");
        while (f && fgets(text, sizeof text, f)) {
            unsigned long long v;
            if (sscanf(text, "voluntary_ctxt_switches: %llu", &v) == 1 ||
                sscanf(text, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
                *switches += v;
        }
        if (f) fclose(f);
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        f = fopen(path, "r");
        unsigned long long run;
        if (f && fscanf(f, "%llu", &run) == 1) *cpu_ns += run;
        if (f) fclose(f);
    }
    if (dir) closedir(dir);
    *rss = *hwm = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(text, sizeof text, f)) {
        sscanf(text, "VmRSS: %ld", rss);
        sscanf(text, "VmHWM: %ld", hwm);
    }
    if (f) fclose(f);
}

/* Kills and reaps every process left re-parented to us. */
static void kill_leftovers(void) {
    char path[300], text[512];
    pid_t self = getpid();
    DIR *dir = opendir("/proc");
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = 0;
        char *rp = strrchr(text, ')');
        int ppid;
        char state;
        if (rp && sscanf(rp + 2, "%c %d", &state, &ppid) == 2 && ppid == self && state != 'Z') {
            kill(atoi(e->d_name), SIGKILL);
            printf("leftover=%s\n", e->d_name);
        }
    }
    if (dir) closedir(dir);
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(int argc, char **argv) {
    long term_after = 0;
    int kill_on_complete = 0;
    double sample_after = 0, idle_warm = 0, idle_span = 0, wait_max = 0, rate = 0;
    const char *exitfile = NULL;
    int opt, pipe_out = 0, pipe_in = 0;
    while ((opt = getopt(argc, argv, "+v:d:n:H:l:T:CS:I:R:x:W:P:")) != -1) {
        switch (opt) {
        case 'v':
            mode = !strcmp(optarg, "none") ? M_NONE : !strcmp(optarg, "lines") ? M_LINES
                 : !strcmp(optarg, "prefixed") ? M_PREFIXED : !strcmp(optarg, "raw") ? M_RAW : -1;
            if (mode < 0) die("-v none|lines|prefixed|raw");
            break;
        case 'd': ndaemons = atol(optarg); break;
        case 'n': nlines = strtoull(optarg, NULL, 10); break;
        case 'H': hogs = atol(optarg); break;
        case 'l': len = atol(optarg); break;
        case 'T': term_after = atol(optarg); break;
        case 'C': kill_on_complete = 1; break;
        case 'S': sample_after = atof(optarg); break;
        case 'I': if (sscanf(optarg, "%lf,%lf", &idle_warm, &idle_span) != 2) die("-I W,S"); break;
        case 'R': rate = atof(optarg); break;
        case 'x': exitfile = optarg; break;
        case 'W': wait_max = atof(optarg); break;
        case 'P': if (sscanf(optarg, "%d,%d", &pipe_out, &pipe_in) < 1) die("-P OUT[,IN]"); break;
        default: die("usage: meter [OPTIONS] -- CMD ARGS... ['|' CMD ARGS...]...");
        }
    }
    if (optind >= argc) die("no command");
    if (len < HEAD + 2 || len > MAXLEN) die("-l must be 18..4096");
    pad = (size_t)len - HEAD - 1;
    for (size_t i = 0; i < pad + 26; i++) pattern[i] = (char)('a' + i % 26);
    next_seq = calloc((size_t)ndaemons + 1, sizeof *next_seq);
    first_at = malloc(((size_t)ndaemons + 1) * sizeof *first_at);
    done_at = malloc(((size_t)ndaemons + 1) * sizeof *done_at);
    for (long i = 0; i <= ndaemons; i++) first_at[i] = done_at[i] = -1;
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);

    /* Spawn the pipeline. */
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC), in = devnull, out[2];
    pid_t fwd = -1;
    t0 = now_ns();
    for (int a = optind; a < argc;) {
        int b = a;
        while (b < argc && strcmp(argv[b], "|") != 0) b++;
        argv[b < argc ? b : argc] = NULL;
        if (pipe2(out, O_CLOEXEC) < 0) die("pipe");
        int size = b < argc ? pipe_in : pipe_out;
        if (size > 0 && fcntl(out[0], F_SETPIPE_SZ, size) < 0) die("F_SETPIPE_SZ");
        if ((fwd = fork()) == 0) {
            signal(SIGPIPE, SIG_DFL);
            dup2(in, 0), dup2(out[1], 1);
            execvp(argv[a], argv + a);
            fprintf(stderr, "meter: exec %s: %s\n", argv[a], strerror(errno));
            _exit(127);
        }
        close(out[1]);
        if (in != devnull) close(in);
        in = out[0];
        a = b + 1;
    }
    int fd = in;
    fcntl(fd, F_SETFL, O_NONBLOCK);

    static char buf[BUFSZ];
    size_t have = 0;
    int skipping = 0, eof = 0, timed_out = 0;
    int64_t sample_at = sample_after > 0 ? t0 + (int64_t)(sample_after * 1e9) : NEVER;
    int64_t idle_a = idle_span > 0 ? t0 + (int64_t)(idle_warm * 1e9) : NEVER, idle_b = NEVER;
    int64_t give_up = wait_max > 0 ? t0 + (int64_t)(wait_max * 1e9) : NEVER;
    int stage = 0;
    int64_t t_kill = -1, t_complete = -1, next_read = 0, t_eof = -1;
    uint64_t sw_a = 0, cpu_a = 0, sw_b = 0, cpu_b = 0;
    long rss = -1, hwm = -1, dummy;
    int termed = 0;

    while (!eof) {
        int64_t now = now_ns();
        if (now >= sample_at) {
            uint64_t s, c;
            proc_sample(fwd, &s, &c, &rss, &hwm);
            sample_at = NEVER;
            rate = 0;
            if (!termed) kill(fwd, SIGTERM), termed = 1, t_kill = now_ns();
        }
        if (now >= idle_a) {
            proc_sample(fwd, &sw_a, &cpu_a, &rss, &dummy);
            idle_b = now_ns() + (int64_t)(idle_span * 1e9);
            idle_a = NEVER;
        }
        if (now >= idle_b) {
            proc_sample(fwd, &sw_b, &cpu_b, &rss, &hwm);
            printf("idle_s=%.3f\nwakeups=%llu\ncpu_ms=%.3f\nrss_kb=%ld\n",
                   ms(now - idle_b) / 1e3 + idle_span, (unsigned long long)(sw_b - sw_a),
                   ms((int64_t)(cpu_b - cpu_a)), rss);
            idle_b = NEVER;
            if (!termed) kill(fwd, SIGTERM), termed = 1, t_kill = now_ns();
        }
        if (now >= give_up) {
            /* Escalate: SIGTERM; 2 s later SIGKILL; then kill what it left
             * behind (orphans holding the pipe); then stop reading. */
            timed_out = 1;
            if (stage == 0) kill(fwd, SIGTERM), termed = 1;
            else if (stage == 1) kill(fwd, SIGKILL);
            else if (stage == 2) kill_leftovers();
            else break;
            give_up = now + (stage == 1 ? 500000000 : 2000000000);
            stage++;
        }
        int64_t wake = sample_at;
        if (idle_a < wake) wake = idle_a;
        if (idle_b < wake) wake = idle_b;
        if (give_up < wake) wake = give_up;
        int throttled = rate > 0 && next_read > now;
        if (throttled && next_read < wake) wake = next_read;
        int timeout = wake == NEVER ? -1 : (int)((wake - now) / 1000000 + 1);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, throttled ? 0 : 1, timeout);
        if (r <= 0 || throttled) continue;

        size_t room = BUFSZ - have;
        if (rate > 0 && room > 4096) room = 4096;
        ssize_t n = read(fd, buf + have, room);
        if (n < 0) continue;
        now = now_ns();
        if (n == 0) {
            t_eof = now;
            eof = 1;
            if (have && mode != M_NONE) on_line(buf, have, now); /* unterminated last line */
            break;
        }
        bytes += (uint64_t)n;
        if (rate > 0) next_read = (next_read > now ? next_read : now) + (int64_t)((double)n * 1e9 / rate);
        if (mode == M_NONE) continue;
        have += (size_t)n;
        char *s = buf, *end = buf + have, *nl;
        while ((nl = memchr(s, '\n', (size_t)(end - s)))) {
            if (skipping) skipping = 0;
            else on_line(s, (size_t)(nl - s), now);
            s = nl + 1;
        }
        have = (size_t)(end - s);
        if (have == BUFSZ) { /* a line longer than the buffer: one garbled line */
            if (!skipping) garbled++, sample_bad(buf, 64);
            skipping = 1;
            have = 0;
        }
        memmove(buf, s, have);
        if (term_after && !termed && dlines >= (uint64_t)term_after) {
            t_kill = now_ns();
            kill(fwd, SIGTERM);
            termed = 1;
        }
        if (kill_on_complete && !termed && complete == ndaemons - hogs) {
            t_complete = now;
            t_kill = now_ns();
            kill(fwd, SIGTERM);
            termed = 1;
        }
    }
    int status = 0, reaped = 0;
    int64_t t_exit = -1;
    /* The forwarder's own CPU time (not its children's), read while it is
     * a zombie: waited for with WNOWAIT, its /proc entry still stands. */
    siginfo_t si = {0};
    long long fwd_cpu = -1;
    if (waitid(P_PID, fwd, &si, WEXITED | WNOWAIT | (timed_out ? WNOHANG : 0)) == 0 && si.si_pid == fwd) {
        t_exit = now_ns();
        uint64_t s, c;
        long r1, r2;
        proc_sample(fwd, &s, &c, &r1, &r2);
        fwd_cpu = (long long)c;
    }
    if (waitpid(fwd, &status, timed_out ? WNOHANG : 0) == fwd) {
        if (t_exit < 0) t_exit = now_ns();
        reaped = 1;
    }
    kill_leftovers();
    while (waitpid(-1, NULL, 0) > 0) {}

    printf("bytes=%llu\n", (unsigned long long)bytes);
    if (t_eof >= 0) printf("eof_ms=%.3f\n", ms(t_eof - t0));
    if (t_exit >= 0) printf("exit_ms=%.3f\n", ms(t_exit - t0));
    if (fwd_cpu >= 0) printf("fwd_cpu_ms=%.3f\n", ms(fwd_cpu));
    if (reaped && WIFEXITED(status)) printf("status=%d\n", WEXITSTATUS(status));
    else if (reaped) printf("status=sig%d\n", WTERMSIG(status));
    if (timed_out) printf("timeout=1\n");
    if (t_kill >= 0 && t_exit >= 0) printf("term_ms=%.3f\n", ms(t_exit - t_kill));
    if (hwm >= 0 && idle_span == 0) printf("hwm_kb=%ld\nrss_kb=%ld\n", hwm, rss);
    if (exitfile) {
        FILE *f = fopen(exitfile, "r");
        long long te;
        if (f && fscanf(f, "%lld", &te) == 1 && t_exit >= 0) printf("after_exit_ms=%.3f\n", ms(t_exit - te));
        if (f) fclose(f);
    }
    if (mode == M_NONE) return 0;
    printf("lines=%llu\nown=%llu\ndaemon_lines=%llu\nlast_own=%s\nlast_is_own=%d\n",
           (unsigned long long)nl_lines, (unsigned long long)own, (unsigned long long)dlines, last_own,
           last_is_own);
    if (t_first >= 0) printf("first_ms=%.3f\n", ms(t_first - t0));
    if (mode == M_LINES) return 0;
    uint64_t missing = 0;
    long incomplete = 0;
    int64_t fmin = NEVER, fmax = -1;
    int64_t *done = malloc(((size_t)ndaemons + 1) * sizeof *done);
    long nd = 0;
    for (long i = 0; i < ndaemons; i++) {
        if (first_at[i] >= 0) {
            if (first_at[i] < fmin) fmin = first_at[i];
            if (first_at[i] > fmax) fmax = first_at[i];
        }
        if (i < hogs) continue;
        if (nlines && next_seq[i] < nlines) missing += nlines - next_seq[i], incomplete++;
        if (done_at[i] >= 0) done[nd++] = done_at[i] - t0;
    }
    printf("ok=%llu\ngarbled=%llu\norder=%llu\nextra=%llu\ncut=%llu\nmissing=%llu\nincomplete=%ld\n",
           (unsigned long long)ok, (unsigned long long)garbled, (unsigned long long)order,
           (unsigned long long)extra, (unsigned long long)cut, (unsigned long long)missing, incomplete);
    if (bad_sample[0]) printf("bad_sample=%s\n", bad_sample);
    if (fmax >= 0) printf("first_spread_ms=%.3f\n", ms(fmax - fmin));
    if (nd > 0) {
        qsort(done, (size_t)nd, sizeof *done, cmp64);
        printf("done_median_ms=%.3f\ndone_max_ms=%.3f\n", ms(done[nd / 2]), ms(done[nd - 1]));
    }
    if (t_complete >= 0) printf("complete_ms=%.3f\n", ms(t_complete - t0));
    return 0;
}
