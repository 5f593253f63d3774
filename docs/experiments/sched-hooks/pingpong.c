#define _GNU_SOURCE
/* Two processes bounce a byte through two pipes N times: two context
 * switches per round trip when they share a CPU. Prints ns per round trip. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int a[2], b[2]; pipe(a); pipe(b);
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(0, &s); sched_setaffinity(0, sizeof s, &s);
    char c = 0;
    if (argc > 2) { fprintf(stderr, "pid %d\n", getpid()); sleep(atoi(argv[2])); }
    if (fork() == 0) { for (long i = 0; i < n; i++) { read(a[0], &c, 1); write(b[1], &c, 1); } _exit(0); }
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) { write(a[1], &c, 1); read(b[0], &c, 1); }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
