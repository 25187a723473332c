//! `bedside`: run, fine-tune and evaluate open LLMs that answer patients with comfort and
//! correct medical knowledge. Everything works offline; nothing writes patient text to logs.

mod adapter;
mod args;
mod bench;
mod chat;
mod data;
mod eval;
mod eval_scorer;
mod generate;
mod hub;
mod info;
mod serve;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bedside",
    version,
    about = "Run, fine-tune and evaluate open LLMs for empathetic, accurate answers to patients",
    after_help = "Examples:\n  bedside info models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n  bedside generate --user \"I'm scared about my chest pain. What should I do?\"\n  bedside chat --system \"You are a caring clinician.\"\n  bedside bench --prompt-tokens 512 --gen-tokens 128\n  bedside serve --adapter tuned=runs/demo/train/adapter\n  bedside pull bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M\n\nLogs go to stderr (RUST_LOG or -v to raise the level); answers go to stdout.\nCPU work runs on one thread per physical core; RAYON_NUM_THREADS=N sets another count."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug). Logs never contain prompt or answer text.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Info(info::InfoArgs),
    Generate(generate::GenerateArgs),
    Chat(chat::ChatArgs),
    Bench(bench::BenchArgs),
    Adapter(adapter::AdapterArgs),
    Data(data::DataArgs),
    Eval(eval::EvalArgs),
    Train(train::TrainArgs),
    Serve(serve::ServeArgs),
    Pull(hub::PullArgs),
    Cache(hub::CacheArgs),
}

/// A closed stdout (`bedside info MODEL | head -n 1`) ends the command quietly, once for every
/// command: Rust ignores SIGPIPE, which turns each later print into a panic (exit 101 and a
/// backtrace); with the default action restored, the process ends at its first write to the
/// closed pipe, as `cat` and `grep` do; `serve` ignores it again (`survive_closed_sockets`).
#[cfg(unix)]
fn end_quietly_on_closed_stdout() {
    // SAFETY: restores a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_stdout() {}

/// A server must outlive its clients: a client that hangs up mid-answer makes the next write to
/// its socket fail, and writes that go through `writev` (hyper's vectored writes) or TLS do not
/// carry MSG_NOSIGNAL, so with SIGPIPE's default action one disconnect would end the server. It
/// ignores the signal and handles the EPIPE error on that connection instead.
#[cfg(unix)]
fn survive_closed_sockets() {
    // SAFETY: sets a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn survive_closed_sockets() {}

/// Whether an error comes from writing to a closed pipe (where the platform reports it as an
/// error rather than a signal): the reader has stopped reading, which is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() {
    end_quietly_on_closed_stdout();
    // candle works out its thread count before every matmul, and on Linux that means reading
    // /proc/cpuinfo each time unless RAYON_NUM_THREADS is set (about 2% of a training step).
    // Fix it once, at the count candle would choose, before any thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        survive_closed_sockets();
    }
    // A server logs each request (info); other commands only warnings unless asked.
    let serve = match &cli.command {
        Command::Serve(a) => match a.resolve() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let level = match cli.verbose + u8::from(serve.is_some()) {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a service's log collector would store the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if serve.as_ref().is_some_and(|c| c.log_format == bedside_serve::LogFormat::Json) {
        fmt.json().with_current_span(false).init();
    } else {
        fmt.init();
    }
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Adapter(a) => adapter::run(a),
        Command::Data(a) => data::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Serve(_) => serve.map_or_else(|| Ok(()), serve::run),
        Command::Pull(a) => hub::pull(a),
        Command::Cache(a) => hub::cache(a),
    };
    if let Err(e) = result {
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
