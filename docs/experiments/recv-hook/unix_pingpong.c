#define _GNU_SOURCE
/* Two processes bounce a byte over a Unix stream socket pair N times, both
 * pinned to CPU 0; each reads with MSG_DONTWAIT first (an EAGAIN read, as
 * an event loop makes) and then blocks. Prints ns per round trip. A
 * workload perf-agent does not watch: every receive hook the agent keeps
 * on the machine's socket reads taxes it. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void get(int fd, char *c) {
    if (recv(fd, c, 1, MSG_DONTWAIT) == 1)
        return;
    recv(fd, c, 1, 0);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return perror("socketpair"), 1;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(0, &s);
    sched_setaffinity(0, sizeof s, &s);
    char c = 0;
    if (fork() == 0) {
        for (long i = 0; i < n; i++) {
            get(sv[1], &c);
            send(sv[1], &c, 1, 0);
        }
        _exit(0);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        send(sv[0], &c, 1, 0);
        get(sv[0], &c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
