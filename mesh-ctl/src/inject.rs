//! `mesh-ctl inject` / `uninject`: the injector webhook's change, made offline on manifests
//! (files or stdin, multi-document YAML or JSON) and written to stdout, as
//! `linkerd inject` / `istioctl kube-inject` do: `mesh-ctl inject -f app.yaml | kubectl apply -f -`.

use std::io::Read;

use meshwork_inject::{manifest, Config};

#[derive(clap::Args)]
pub struct InjectArgs {
    /// Manifest files; `-` (or none) reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// The proxy image.
    #[arg(long, default_value = "meshwork-proxy")]
    pub proxy_image: String,
    /// The identity service the proxy asks for its certificate (host:port).
    #[arg(long, default_value_t = Config::default().identity_addr)]
    pub identity_addr: String,
    #[arg(long, default_value = "info")]
    pub proxy_log_level: String,
}

#[derive(clap::Args)]
pub struct UninjectArgs {
    /// Manifest files; `-` (or none) reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
}

fn read_all(files: &[String]) -> anyhow::Result<String> {
    let mut text = String::new();
    let stdin = ["-".to_string()];
    let files = if files.is_empty() { &stdin[..] } else { files };
    for f in files {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.is_empty() {
            text.push_str("---\n");
        }
        if f == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
        } else {
            text.push_str(
                &std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {f}: {e}"))?,
            );
        }
    }
    Ok(text)
}

fn run(files: &[String], cfg: Option<&Config>) -> anyhow::Result<()> {
    let out = manifest::process(&read_all(files)?, cfg)?;
    // Nothing is written unless every document was read: a half-written manifest piped to
    // kubectl would apply half an app.
    print!("{}", out.yaml);
    for line in out.report {
        eprintln!("{line}");
    }
    Ok(())
}

pub fn inject(a: InjectArgs) -> anyhow::Result<()> {
    let cfg = Config {
        proxy_image: a.proxy_image,
        identity_addr: a.identity_addr,
        log: a.proxy_log_level,
    };
    run(&a.files, Some(&cfg))
}

pub fn uninject(a: UninjectArgs) -> anyhow::Result<()> {
    run(&a.files, None)
}
