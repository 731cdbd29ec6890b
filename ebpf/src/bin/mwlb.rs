//! `mwlb`: drive one node's datapath by hand — program frontends, list what is programmed,
//! uninstall. `program --churn` keeps re-programming subsets of the backends until killed, which
//! is how the tests kill -9 a loader in the middle of updates.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use meshwork_ebpf::{Algorithm, Backend, BpfDatapath, Config, Datapath, Frontend, Service};

#[derive(Parser)]
#[command(
    name = "mwlb",
    about = "Meshwork eBPF load balancer: program, list, uninstall"
)]
struct Cli {
    /// Per-node bpffs pin directory.
    #[arg(long)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Program `--service tcp|udp:VIP:PORT=IP:PORT,IP:PORT` frontends (IPv6 as `[addr]:port`).
    Program {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long = "service", required = true)]
        services: Vec<String>,
        /// Keep re-programming rotating non-empty subsets of the backends, every millisecond.
        #[arg(long)]
        churn: bool,
    },
    /// Print what is programmed, read back from the maps.
    List {
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// Detach everything and remove the pins.
    Uninstall,
}

fn parse(spec: &str) -> Result<Service, String> {
    let (front, backs) = spec.split_once('=').ok_or("missing '='")?;
    let (proto, addr) = front.split_once(':').ok_or("missing protocol")?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let frontend = match proto {
        "tcp" => Frontend::tcp(addr.ip(), addr.port()),
        "udp" => Frontend::udp(addr.ip(), addr.port()),
        p => return Err(format!("protocol {p:?}: tcp or udp")),
    };
    let backends = backs
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|b| {
            b.parse::<SocketAddr>()
                .map(|a| Backend::new(a.ip(), a.port()))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{backs}: {e}"))?;
    Ok(Service {
        frontend,
        backends,
        algorithm: Algorithm::Random,
        affinity: None,
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let cfg = |cgroup: PathBuf| {
        let mut c = Config::new("mwlb", cgroup);
        c.pin_dir = cli.pin_dir.clone();
        c
    };
    match cli.cmd {
        Cmd::Program {
            cgroup,
            services,
            churn,
        } => {
            let services: Vec<Service> = services
                .iter()
                .map(|s| parse(s))
                .collect::<Result<_, _>>()?;
            let mut dp = BpfDatapath::open(cfg(cgroup)).map_err(|e| e.to_string())?;
            for s in &services {
                dp.upsert(s).map_err(|e| e.to_string())?;
            }
            println!("programmed {} frontends", services.len());
            if !churn {
                // Free what the updates replaced once no program can still be reading it.
                dp.settle();
                return Ok(());
            }
            let mut i = 0usize;
            loop {
                for s in &services {
                    let n = s.backends.len().max(1);
                    let mut sub = s.clone();
                    sub.backends = s
                        .backends
                        .iter()
                        .cycle()
                        .skip(i % n)
                        .take(1 + i % n)
                        .copied()
                        .collect();
                    sub.backends.sort();
                    sub.backends.dedup();
                    dp.upsert(&sub).map_err(|e| e.to_string())?;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Cmd::List { cgroup } => {
            let dp = BpfDatapath::open(cfg(cgroup)).map_err(|e| e.to_string())?;
            for s in dp.list().map_err(|e| e.to_string())? {
                let backs: Vec<String> = s
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", b.addr, b.port))
                    .collect();
                println!(
                    "{:?} {}:{} -> {}",
                    s.frontend.proto,
                    s.frontend.addr,
                    s.frontend.port,
                    backs.join(",")
                );
            }
            Ok(())
        }
        Cmd::Uninstall => meshwork_ebpf::uninstall_dir(&cli.pin_dir).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mwlb: {e}");
            ExitCode::from(1)
        }
    }
}
