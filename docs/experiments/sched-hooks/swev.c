/* Opens a context-switch software perf event on every thread of PID
 * (inherit=1: threads they create get it too), attaches an empty
 * BPF_PROG_TYPE_PERF_EVENT program, and holds it for SECS seconds.
 * usage: swev PID SECS [noprog] (docs/experiments/sched-hooks/run.sh) */
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <dirent.h>

int main(int argc, char **argv) {
    int pid = atoi(argv[1]), secs = atoi(argv[2]);
    int noprog = argc > 3;
    struct bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_PERF_EVENT;
    a.insns = (unsigned long)insns;
    a.insn_cnt = 2;
    a.license = (unsigned long)"GPL";
    int prog = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (prog < 0) { perror("BPF_PROG_LOAD"); return 1; }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        int tid = atoi(e->d_name);
        if (!tid) continue;
        struct perf_event_attr pa;
        memset(&pa, 0, sizeof pa);
        pa.size = sizeof pa;
        pa.type = PERF_TYPE_SOFTWARE;
        pa.config = PERF_COUNT_SW_CONTEXT_SWITCHES;
        pa.sample_period = 1;
        pa.inherit = 1;
        int fd = syscall(SYS_perf_event_open, &pa, tid, -1, -1, 0);
        if (fd < 0) { perror("perf_event_open"); return 1; }
        if (!noprog && ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog) < 0) { perror("SET_BPF"); return 1; }
        ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
        n++;
    }
    fprintf(stderr, "%d events\n", n);
    sleep(secs);
    return 0;
}
