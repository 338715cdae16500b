//! Node metrics from the host's procfs: `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`,
//! `/proc/pressure/{cpu,memory,io}`, `/proc/net/dev` and `/proc/diskstats`.
//!
//! [`NodeCollector::collect`] reads raw counters into a [`NodeSnapshot`]; turning two snapshots
//! into rates is [`crate::normalize`]'s job. Each file is read and parsed on its own: one that is
//! missing, unreadable or garbled costs only its own metrics, and comes back as a [`CollectError`]
//! for the caller to log and count. The parsers are pure functions over `&str` so they can be
//! tested on recorded and hostile input.
//!
//! The parsers are written here rather than taken from `procfs-core` because that crate can panic
//! on hostile input (it slices `/proc/meminfo` keys by byte without checking char boundaries), and
//! it allocates a `String` per line and a map per file on every cycle of a process that runs on
//! every node.

use crate::config::matches_pattern;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A procfs file that could not be used this cycle.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The file could not be read (missing, permission denied, a pod that went away).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its contents are not what the kernel writes.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: ParseError,
    },
}

impl CollectError {
    /// A short, stable label for metrics (`read` or `parse`).
    pub fn kind(&self) -> &'static str {
        match self {
            CollectError::Read { .. } => "read",
            CollectError::Parse { .. } => "parse",
        }
    }
}

/// What was wrong with a file's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required line or field is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field that should be a number is not.
    #[error("bad number {value:?} in {field}")]
    BadNumber {
        /// Which field.
        field: &'static str,
        /// What was there (truncated).
        value: String,
    },
}

fn num<T: std::str::FromStr>(field: &'static str, s: Option<&str>) -> Result<T, ParseError> {
    let s = s.ok_or(ParseError::Missing(field))?;
    s.parse().map_err(|_| ParseError::BadNumber {
        field,
        value: s.chars().take(32).collect(),
    })
}

/// CPU time of one CPU or of all, in clock ticks (USER_HZ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice (guest time is already included in user by the kernel).
    pub user: u64,
    /// system + irq + softirq.
    pub system: u64,
    /// idle.
    pub idle: u64,
    /// iowait.
    pub iowait: u64,
    /// steal.
    pub steal: u64,
}

impl CpuTicks {
    /// All ticks.
    pub fn total(&self) -> u64 {
        self.user + self.system + self.idle + self.iowait + self.steal
    }

    /// Ticks not idle and not waiting for I/O.
    pub fn busy(&self) -> u64 {
        self.user + self.system + self.steal
    }
}

/// `/proc/stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelStat {
    /// The `cpu` line.
    pub total: CpuTicks,
    /// The `cpuN` lines, in order.
    pub per_cpu: Vec<CpuTicks>,
    /// Context switches since boot.
    pub ctxt: u64,
    /// Runnable tasks.
    pub procs_running: u64,
    /// Tasks blocked on I/O.
    pub procs_blocked: u64,
}

fn parse_cpu_line(rest: &str) -> Result<CpuTicks, ParseError> {
    let mut it = rest.split_ascii_whitespace();
    let user: u64 = num("cpu user", it.next())?;
    let nice: u64 = num("cpu nice", it.next())?;
    let system: u64 = num("cpu system", it.next())?;
    let idle: u64 = num("cpu idle", it.next())?;
    // Fields after idle appeared over kernel versions; absent means zero.
    let mut opt = |f| -> Result<u64, ParseError> {
        match it.next() {
            Some(s) => num(f, Some(s)),
            None => Ok(0),
        }
    };
    let iowait = opt("cpu iowait")?;
    let irq = opt("cpu irq")?;
    let softirq = opt("cpu softirq")?;
    let steal = opt("cpu steal")?;
    Ok(CpuTicks {
        user: user.saturating_add(nice),
        system: system.saturating_add(irq).saturating_add(softirq),
        idle,
        iowait,
        steal,
    })
}

/// Parses `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<KernelStat, ParseError> {
    let mut total = None;
    let mut st = KernelStat::default();
    let mut ctxt = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "cpu" => total = Some(parse_cpu_line(rest)?),
            k if k.starts_with("cpu") => st.per_cpu.push(parse_cpu_line(rest)?),
            "ctxt" => ctxt = Some(num("ctxt", Some(rest.trim()))?),
            "procs_running" => st.procs_running = num("procs_running", Some(rest.trim()))?,
            "procs_blocked" => st.procs_blocked = num("procs_blocked", Some(rest.trim()))?,
            _ => {}
        }
    }
    st.total = total.ok_or(ParseError::Missing("cpu line"))?;
    st.ctxt = ctxt.ok_or(ParseError::Missing("ctxt line"))?;
    Ok(st)
}

/// The parts of `/proc/meminfo` the agent uses, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal.
    pub total: u64,
    /// MemAvailable (estimated from MemFree + Cached + Buffers on kernels before 3.14).
    pub available: u64,
    /// SwapTotal.
    pub swap_total: u64,
    /// SwapFree.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let (mut total, mut available, mut free, mut cached, mut buffers) = (None, None, 0, 0, 0);
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let want = matches!(
            key,
            "MemTotal"
                | "MemAvailable"
                | "MemFree"
                | "Cached"
                | "Buffers"
                | "SwapTotal"
                | "SwapFree"
        );
        if !want {
            continue;
        }
        let kb: u64 = num("meminfo value", rest.split_ascii_whitespace().next())?;
        let bytes = kb.saturating_mul(1024);
        match key {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = bytes,
            "Cached" => cached = bytes,
            "Buffers" => buffers = bytes,
            "SwapTotal" => m.swap_total = bytes,
            _ => m.swap_free = bytes,
        }
    }
    m.total = total.ok_or(ParseError::Missing("MemTotal"))?;
    m.available = available.unwrap_or(free + cached + buffers).min(m.total);
    Ok(m)
}

/// Parses the one-minute load average from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<f64, ParseError> {
    let v: f64 = num("load1", text.split_ascii_whitespace().next())?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(ParseError::BadNumber {
            field: "load1",
            value: v.to_string(),
        })
    }
}

/// Stall totals of one PSI file, microseconds since boot. `full` is absent for CPU on old
/// kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiTotals {
    /// Time some task was stalled.
    pub some_us: u64,
    /// Time all non-idle tasks were stalled.
    pub full_us: Option<u64>,
}

/// Parses a PSI file (`/proc/pressure/*` or a cgroup's `*.pressure`).
pub fn parse_psi(text: &str) -> Result<PsiTotals, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let kind = it.next();
        let total = it.find_map(|kv| kv.strip_prefix("total="));
        match kind {
            Some("some") => some = Some(num("psi some total", total)?),
            Some("full") => full = Some(num("psi full total", total)?),
            _ => {}
        }
    }
    Ok(PsiTotals {
        some_us: some.ok_or(ParseError::Missing("psi some line"))?,
        full_us: full,
    })
}

/// Counters of one network interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive + transmit errors.
    pub errors: u64,
    /// Receive + transmit drops.
    pub drops: u64,
}

/// Parses `/proc/net/dev` (or `/proc/<pid>/net/dev`), keeping interfaces `keep` accepts.
pub fn parse_net_dev(
    text: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, NetCounters)>, ParseError> {
    let mut out = Vec::new();
    // Two header lines, then `iface: rx_bytes rx_packets rx_errs rx_drop fifo frame compressed
    // multicast tx_bytes tx_packets tx_errs tx_drop ...`.
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            return Err(ParseError::Missing("interface name"));
        };
        let name = name.trim();
        if !keep(name) {
            continue;
        }
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        if f.len() < 12 {
            return Err(ParseError::Missing("net/dev columns"));
        }
        let n = |i: usize| num::<u64>("net/dev counter", Some(f[i]));
        out.push((
            name.to_owned(),
            NetCounters {
                rx_bytes: n(0)?,
                rx_packets: n(1)?,
                errors: n(2)?.saturating_add(n(10)?),
                drops: n(3)?.saturating_add(n(11)?),
                tx_bytes: n(8)?,
                tx_packets: n(9)?,
            },
        ));
    }
    Ok(out)
}

/// Counters of one block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// 512-byte sectors read.
    pub sectors_read: u64,
    /// 512-byte sectors written.
    pub sectors_written: u64,
    /// Milliseconds the device had I/O in flight.
    pub io_ms: u64,
}

/// Parses `/proc/diskstats`, keeping devices `keep` accepts.
pub fn parse_diskstats(
    text: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, DiskCounters)>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 14 {
            return Err(ParseError::Missing("diskstats columns"));
        }
        if !keep(f[2]) {
            continue;
        }
        let n = |i: usize| num::<u64>("diskstats counter", Some(f[i]));
        out.push((
            f[2].to_owned(),
            DiskCounters {
                sectors_read: n(5)?,
                sectors_written: n(9)?,
                io_ms: n(12)?,
            },
        ));
    }
    Ok(out)
}

/// Everything read from procfs in one cycle. A part is `None` when its file failed.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    /// `/proc/stat`.
    pub stat: Option<KernelStat>,
    /// `/proc/meminfo`.
    pub mem: Option<MemInfo>,
    /// `/proc/loadavg`, one-minute.
    pub load1: Option<f64>,
    /// `/proc/pressure/cpu`.
    pub psi_cpu: Option<PsiTotals>,
    /// `/proc/pressure/memory`.
    pub psi_memory: Option<PsiTotals>,
    /// `/proc/pressure/io`.
    pub psi_io: Option<PsiTotals>,
    /// `/proc/net/dev`, included interfaces.
    pub net: Option<Vec<(String, NetCounters)>>,
    /// `/proc/diskstats`, whole disks only.
    pub disks: Option<Vec<(String, DiskCounters)>>,
}

/// Reads node metrics from a procfs root, reusing one buffer.
#[derive(Debug)]
pub struct NodeCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    exclude_net: Vec<String>,
    exclude_disk: Vec<String>,
    net_dev: &'static str,
    buf: Vec<u8>,
}

impl NodeCollector {
    /// A collector for the given roots and exclusion patterns.
    pub fn new(
        proc_root: PathBuf,
        sys_root: PathBuf,
        exclude_net: Vec<String>,
        exclude_disk: Vec<String>,
    ) -> Self {
        // `<proc>/net` is `<proc>/self/net`: the reader's own network namespace, which in a
        // DaemonSet pod is the pod's. The host's is the one its init process lives in.
        let net_dev = if proc_root.join("1/net/dev").is_file() {
            "1/net/dev"
        } else {
            "net/dev"
        };
        NodeCollector {
            net_dev,
            proc_root,
            sys_root,
            exclude_net,
            exclude_disk,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// The procfs root.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    fn read<T>(
        &mut self,
        rel: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<CollectError>,
    ) -> Option<T> {
        let path = self.proc_root.join(rel);
        read_parse(&path, &mut self.buf, parse, errors)
    }

    /// Reads every node file once.
    pub fn collect(&mut self, errors: &mut Vec<CollectError>) -> NodeSnapshot {
        let mut snap = NodeSnapshot {
            stat: self.read("stat", parse_stat, errors),
            mem: self.read("meminfo", parse_meminfo, errors),
            load1: self.read("loadavg", parse_loadavg, errors),
            ..NodeSnapshot::default()
        };
        // PSI is absent on kernels without CONFIG_PSI or booted with psi=0: not an error.
        if self.proc_root.join("pressure").is_dir() {
            snap.psi_cpu = self.read("pressure/cpu", parse_psi, errors);
            snap.psi_memory = self.read("pressure/memory", parse_psi, errors);
            snap.psi_io = self.read("pressure/io", parse_psi, errors);
        }
        let exclude_net = std::mem::take(&mut self.exclude_net);
        snap.net = self.read(
            self.net_dev,
            |t| parse_net_dev(t, |n| !exclude_net.iter().any(|p| matches_pattern(p, n))),
            errors,
        );
        self.exclude_net = exclude_net;
        let whole_disks = self.whole_disks();
        let exclude_disk = std::mem::take(&mut self.exclude_disk);
        snap.disks = self.read(
            "diskstats",
            |t| {
                parse_diskstats(t, |n| {
                    whole_disks
                        .as_ref()
                        .is_none_or(|w| w.iter().any(|d| d == n))
                        && !exclude_disk.iter().any(|p| matches_pattern(p, n))
                })
            },
            errors,
        );
        self.exclude_disk = exclude_disk;
        snap
    }

    /// Names under `<sys>/block` (whole disks, no partitions); `None` when sysfs is not there,
    /// in which case every device not excluded counts.
    fn whole_disks(&self) -> Option<Vec<String>> {
        let rd = std::fs::read_dir(self.sys_root.join("block")).ok()?;
        Some(
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
        )
    }
}

/// Reads `path` into `buf` and parses it, recording any failure in `errors`.
pub(crate) fn read_parse<T>(
    path: &Path,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
    errors: &mut Vec<CollectError>,
) -> Option<T> {
    read_parse_opt(path, buf, parse, errors, false)
}

/// Like [`read_parse`], but a file that does not exist is `None` without an error: for files
/// that only some kernels or configurations have (PSI, `memory.events`).
pub(crate) fn read_parse_opt<T>(
    path: &Path,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
    errors: &mut Vec<CollectError>,
    missing_ok: bool,
) -> Option<T> {
    let len = match read_small(path, buf) {
        Ok(len) => len,
        Err(source) => {
            if !(missing_ok && source.kind() == std::io::ErrorKind::NotFound) {
                errors.push(CollectError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
            return None;
        }
    };
    let parsed = std::str::from_utf8(&buf[..len])
        .map_err(|_| ParseError::Missing("UTF-8 text"))
        .and_then(parse);
    match parsed {
        Ok(v) => Some(v),
        Err(reason) => {
            errors.push(CollectError::Parse {
                path: path.to_owned(),
                reason,
            });
            None
        }
    }
}

/// Reads a small kernel file into the front of `buf` and returns its length, with `open`,
/// `read` and `close`: three system calls where `std::fs::read` makes five (it adds `statx` and
/// `lseek` to size a buffer, which procfs and cgroupfs cannot help with, and a final `read` to
/// see EOF). `buf` is a scratch area that only grows: it is zeroed once when it grows, not on
/// every read, since zeroing a 16 KiB buffer per file would cost more than reading the file.
///
/// A read that returns fewer bytes than asked for is taken as EOF. That holds for what the agent
/// reads on Linux: seq_file-backed procfs, sysfs and cgroupfs files fill the caller's buffer up to
/// the end of the file, and regular files (fixtures) return short only at EOF.
fn read_small(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read;
    if buf.len() < 16 * 1024 {
        buf.resize(16 * 1024, 0);
    }
    let mut f = std::fs::File::open(path)?;
    let mut len = 0;
    loop {
        if buf.len() - len < 4096 {
            buf.resize(buf.len() * 2, 0);
        }
        let want = buf.len() - len;
        match f.read(&mut buf[len..]) {
            Ok(n) => {
                len += n;
                if n < want {
                    return Ok(len);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads per-interface counters of the network namespace `pid` lives in, excluding loopback.
pub fn read_pid_net_dev(
    proc_root: &Path,
    pid: u32,
    buf: &mut Vec<u8>,
    errors: &mut Vec<CollectError>,
) -> Option<Vec<(String, NetCounters)>> {
    let path = proc_root.join(pid.to_string()).join("net/dev");
    read_parse(&path, buf, |t| parse_net_dev(t, |n| n != "lo"), errors)
}

/// Sums per-device counter maps keyed by name (used by normalize for node totals).
pub fn by_name<T: Copy>(v: &[(String, T)]) -> HashMap<&str, T> {
    v.iter().map(|(n, c)| (n.as_str(), *c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STAT: &str = "cpu  100 5 50 1000 20 3 2 7 0 0
cpu0 60 5 30 400 10 2 1 4 0 0
cpu1 40 0 20 600 10 1 1 3 0 0
intr 12345 0 0
ctxt 987654
btime 1764000000
processes 4242
procs_running 3
procs_blocked 1
";

    #[test]
    fn stat_is_parsed() {
        let s = parse_stat(STAT).expect("parse");
        assert_eq!(s.total.user, 105);
        assert_eq!(s.total.system, 55);
        assert_eq!(s.total.steal, 7);
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.ctxt, 987_654);
        assert_eq!((s.procs_running, s.procs_blocked), (3, 1));
    }

    #[test]
    fn old_kernel_stat_without_steal_is_fine() {
        let s = parse_stat("cpu 1 2 3 4\nctxt 5\n").expect("parse");
        assert_eq!(s.total.total(), 10);
    }

    #[test]
    fn meminfo_in_bytes_with_fallback() {
        let m = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n",
        )
        .expect("parse");
        assert_eq!(m.total, 1_024_000);
        assert_eq!(m.available, 614_400);
        assert_eq!(m.swap_total - m.swap_free, 6 * 1024);
        let old =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nCached: 50 kB\nBuffers: 5 kB\n")
                .expect("parse");
        assert_eq!(old.available, 155 * 1024);
    }

    #[test]
    fn psi_and_loadavg() {
        let p = parse_psi(
            "some avg10=1.89 avg60=1.93 avg300=0.56 total=2049742\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=17\n",
        )
        .expect("parse");
        assert_eq!(
            p,
            PsiTotals {
                some_us: 2_049_742,
                full_us: Some(17)
            }
        );
        assert_eq!(
            parse_psi("some avg10=0 avg60=0 avg300=0 total=5\n")
                .expect("old cpu")
                .full_us,
            None
        );
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 123\n"), Ok(0.52));
        assert!(parse_loadavg("NaN 1 1").is_err());
    }

    #[test]
    fn net_dev_and_diskstats() {
        let net = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0
  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0
";
        let v = parse_net_dev(net, |n| n != "lo").expect("parse");
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].1,
            NetCounters {
                rx_bytes: 1000,
                rx_packets: 10,
                tx_bytes: 2000,
                tx_packets: 20,
                errors: 4,
                drops: 6
            }
        );
        let disk = " 253       0 vda 100 0 800 10 50 0 400 5 0 30 15 0 0 0 0\n 253       1 vda1 1 0 8 1 1 0 8 1 0 1 1\n";
        let d = parse_diskstats(disk, |n| n == "vda").expect("parse");
        assert_eq!(
            d,
            vec![(
                "vda".to_owned(),
                DiskCounters {
                    sectors_read: 800,
                    sectors_written: 400,
                    io_ms: 30
                }
            )]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_stat("cpu x y z\n").is_err());
        assert!(parse_stat("").is_err());
        assert!(parse_meminfo("MemTotal: lots kB\n").is_err());
        assert!(parse_meminfo("ä: 5\n").is_err());
        assert!(parse_psi("some avg10=1\n").is_err());
        assert!(parse_net_dev("h\nh\neth0 1 2 3\n", |_| true).is_err());
        assert!(parse_diskstats("1 2 sda 3\n", |_| true).is_err());
    }

    #[test]
    fn collects_this_host() {
        let mut c = NodeCollector::new(
            "/proc".into(),
            "/sys".into(),
            vec!["lo".into()],
            vec!["loop*".into()],
        );
        let mut errors = Vec::new();
        let snap = c.collect(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let stat = snap.stat.expect("stat");
        assert!(!stat.per_cpu.is_empty());
        assert!(snap.mem.expect("meminfo").total > 0);
        assert!(
            snap.disks
                .expect("diskstats")
                .iter()
                .all(|(n, _)| !n.starts_with("loop"))
        );
    }

    #[test]
    fn missing_root_reports_errors() {
        let mut c =
            NodeCollector::new("/nonexistent".into(), "/nonexistent".into(), vec![], vec![]);
        let mut errors = Vec::new();
        let snap = c.collect(&mut errors);
        assert!(snap.stat.is_none());
        assert!(errors.len() >= 5);
        assert!(errors.iter().all(|e| e.kind() == "read"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_stat(&s);
            let _ = parse_meminfo(&s);
            let _ = parse_loadavg(&s);
            let _ = parse_psi(&s);
            let _ = parse_net_dev(&s, |_| true);
            let _ = parse_diskstats(&s, |_| true);
        }

        #[test]
        fn parsers_never_panic_on_mutated_real_files(pos in 0usize..400, byte in any::<char>()) {
            let mut s: Vec<char> = STAT.chars().collect();
            if pos < s.len() { s[pos] = byte; }
            let s: String = s.into_iter().collect();
            let _ = parse_stat(&s);
        }
    }
}
