//! CPU time and resident memory of a process, read from /proc.

/// Clock ticks per second of /proc/*/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) used so far by `pid` (`None` = this process).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / TICKS_PER_SEC
}

/// Resident memory of `pid` in KiB, 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU use of this process and the server over an interval, as fractions of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    start: std::time::Instant,
    own: f64,
    server: f64,
    server_pid: Option<u32>,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start(server_pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            start: std::time::Instant::now(),
            own: cpu_seconds(None),
            server: server_pid.map_or(0.0, |p| cpu_seconds(Some(p))),
            server_pid,
        }
    }

    /// (generator cores, server cores) used since the start.
    pub fn stop(&self) -> (f64, f64) {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let own = (cpu_seconds(None) - self.own) / wall;
        let server = self
            .server_pid
            .map_or(0.0, |p| (cpu_seconds(Some(p)) - self.server) / wall);
        (own, server)
    }
}
