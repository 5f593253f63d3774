#!/usr/bin/env python3
"""Per-request program time of the agent's socket programs on demo-server
(http-load, 4 keep-alive connections): 30 000 requests at 10 000 req/s,
then 150 000 at saturation, per round; net of the statistics' floor (the
empty `stats_floor` program). Also the target's CPU per request.
usage: measure.py AGENT_BIN LABEL ROUNDS   (run.sh runs it under two
guest_halt_poll_ns settings)"""
import json, subprocess, sys, time, os, re, signal
agent, label, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
B = "/work/main/target/release"
PROGS = ["tcp_rcv_space_adjust", "sock_recv_length", "tcp_sendmsg_locked", "stats_floor"]
RECV = ("tcp_rcv_space_adjust", "sock_recv_length")  # after and before the eighth session
def progs():
    out = json.loads(subprocess.check_output(["bpftool", "prog", "show", "-j"]))
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in out if p.get("name") in PROGS}
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 10_000_000  # ns, 10 ms ticks
def load(addr, n, rate=None):
    cmd = [f"{B}/http-load", "--url", f"http://{addr}/", "--requests", str(n)]
    if rate: cmd += ["--rate", str(rate)]
    return json.loads(subprocess.check_output(cmd).decode().strip().splitlines()[-1])
subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
ds = subprocess.Popen([f"{B}/demo-server"], stdout=subprocess.PIPE, text=True)
line = ds.stdout.readline(); addr = re.search(r"addr=(\S+)", line).group(1); pid = ds.pid
ag = subprocess.Popen([agent, "attach", "--pid", str(pid), "--out", "/tmp/idle-halt-out.json"], stdout=subprocess.DEVNULL, stderr=open("/tmp/idle-halt-agent.err", "w"))
time.sleep(4)
for r in range(rounds):
    for name, n, rate in [("10k", 30000, 10000), ("sat", 150000, None)]:
        p0, c0 = progs(), cpu(pid)
        res = load(addr, n, rate)
        p1, c1 = progs(), cpu(pid)
        d = {k: ((p1[k][0]-p0[k][0]) / max(1, p1[k][1]-p0[k][1]), (p1[k][1]-p0[k][1]) / n) for k in p1 if k in p0}
        net = sum((ns - d["stats_floor"][0]) * runs for k, (ns, runs) in d.items() if k != "stats_floor") if "stats_floor" in d else float('nan')
        recv = next(d[k] for k in RECV if k in d)
        print(f"{label} {name} r{r}: recv {recv[0]:.0f}ns x{recv[1]:.2f}  send {d['tcp_sendmsg_locked'][0]:.0f}ns x{d['tcp_sendmsg_locked'][1]:.2f}  floor {d.get('stats_floor',(0,0))[0]:.0f}  net/req {net:.0f}ns  targetCPU/req {(c1-c0)/n:.0f}ns  rps {res['requests']/(res['elapsed_ns']/1e9):.0f}", flush=True)
ag.send_signal(signal.SIGINT); ag.wait(timeout=30)
ds.kill()
subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
