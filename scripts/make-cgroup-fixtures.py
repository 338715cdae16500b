#!/usr/bin/env python3
"""Writes the recorded cgroup fixture trees under tests/fixtures/cgroup/.

The file names, formats and layouts are those of a kubelet node (containerd): cgroup v2 with the
systemd driver (kubepods.slice) and cgroup v1 with the cgroupfs driver (kubepods/). Values are
taken from real nodes and rounded. Re-run to regenerate; the tests read the committed output.
"""
import os, shutil, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "cgroup")

PODS = [
    # uid, qos, usage_usec, periods, throttled, throttled_usec, quota, mem_current, inactive_file, mem_max, oom_kill, pids
    ("0c6d1a3e-7a0e-4d55-9d8e-1f6a2b3c4d5e", "guaranteed", 51234567, 1200, 30, 1500000, 200000, 268435456, 16777216, 536870912, 0, [4101, 4133]),
    ("5b2f9c71-3e44-4a8b-b1f0-9a8e7d6c5b4a", "burstable", 9876543, 800, 0, 0, None, 134217728, 33554432, 1073741824, 2, [5202]),
    ("a9e8d7c6-b5a4-4321-8fed-cba987654321", "besteffort", 123456, 0, 0, 0, None, 8388608, 1048576, None, 0, [6303]),
]

PSI = "some avg10=0.12 avg60=0.08 avg300=0.02 total={some}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def v2_systemd(base):
    write(os.path.join(base, "cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
    for uid, qos, usage, periods, thr, thr_us, quota, cur, inact, mmax, oom, pids in PODS:
        u = uid.replace("-", "_")
        if qos == "guaranteed":
            d = os.path.join(base, "kubepods.slice", f"kubepods-pod{u}.slice")
        else:
            d = os.path.join(base, "kubepods.slice", f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{u}.slice")
        write(os.path.join(d, "cpu.stat"), f"usage_usec {usage}\nuser_usec {usage*3//4}\nsystem_usec {usage//4}\nnr_periods {periods}\nnr_throttled {thr}\nthrottled_usec {thr_us}\nnr_bursts 0\nburst_usec 0\n")
        write(os.path.join(d, "cpu.max"), f"{quota} 100000\n" if quota else "max 100000\n")
        write(os.path.join(d, "memory.current"), f"{cur}\n")
        write(os.path.join(d, "memory.max"), f"{mmax}\n" if mmax else "max\n")
        write(os.path.join(d, "memory.stat"), f"anon {cur-inact-4096}\nfile {inact+4096}\nkernel 409600\nactive_file 4096\ninactive_file {inact}\nactive_anon {cur-inact-4096}\ninactive_anon 0\n")
        write(os.path.join(d, "memory.events"), f"low 0\nhigh 0\nmax 0\noom {oom}\noom_kill {oom}\noom_group_kill 0\n")
        write(os.path.join(d, "cpu.pressure"), PSI.format(some=usage // 50, full=usage // 200))
        write(os.path.join(d, "memory.pressure"), PSI.format(some=1200, full=300))
        write(os.path.join(d, "io.pressure"), PSI.format(some=4500, full=1200))
        write(os.path.join(d, "cgroup.procs"), "")
        for i, pid in enumerate(pids):
            c = os.path.join(d, f"cri-containerd-{i:02d}{uid[:8]}{'f'*54}.scope")
            write(os.path.join(c, "cgroup.procs"), f"{pid}\n")
    # Not pods: system slices next to kubepods and the QoS slices' own files.
    write(os.path.join(base, "system.slice", "containerd.service", "cgroup.procs"), "812\n")
    write(os.path.join(base, "kubepods.slice", "kubepods-burstable.slice", "cpu.stat"), "usage_usec 1\n")


def v1_cgroupfs(base):
    for ctl in ("cpu", "cpuacct", "memory", "pids"):
        os.makedirs(os.path.join(base, ctl), exist_ok=True)
    for uid, qos, usage, periods, thr, thr_us, quota, cur, inact, mmax, oom, pids in PODS:
        rel = ["kubepods", f"pod{uid}"] if qos == "guaranteed" else ["kubepods", qos, f"pod{uid}"]
        cpu = os.path.join(base, "cpu", *rel)
        acct = os.path.join(base, "cpuacct", *rel)
        mem = os.path.join(base, "memory", *rel)
        write(os.path.join(acct, "cpuacct.usage"), f"{usage*1000}\n")
        write(os.path.join(cpu, "cpu.stat"), f"nr_periods {periods}\nnr_throttled {thr}\nthrottled_time {thr_us*1000}\n")
        write(os.path.join(cpu, "cpu.cfs_quota_us"), f"{quota}\n" if quota else "-1\n")
        write(os.path.join(cpu, "cpu.cfs_period_us"), "100000\n")
        write(os.path.join(mem, "memory.usage_in_bytes"), f"{cur}\n")
        write(os.path.join(mem, "memory.limit_in_bytes"), f"{mmax}\n" if mmax else "9223372036854771712\n")
        write(os.path.join(mem, "memory.stat"), f"cache {inact+4096}\nrss {cur-inact-4096}\ninactive_file 0\ntotal_cache {inact+4096}\ntotal_rss {cur-inact-4096}\ntotal_inactive_file {inact}\ntotal_active_file 4096\n")
        write(os.path.join(mem, "memory.oom_control"), f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom}\n")
        for d in (cpu, mem):
            write(os.path.join(d, "cgroup.procs"), "")
        for i, pid in enumerate(pids):
            cid = f"{i:02d}{uid[:8]}{'e'*54}"
            for d in (cpu, acct, mem):
                write(os.path.join(d, cid, "cgroup.procs"), f"{pid}\n")


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    v2_systemd(os.path.join(ROOT, "v2-systemd"))
    v1_cgroupfs(os.path.join(ROOT, "v1-cgroupfs"))
    print("wrote", os.path.normpath(ROOT), file=sys.stderr)
