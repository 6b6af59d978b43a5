//! Micro-benchmark of the framing fast path (`frame::frame_chunk`) in each
//! output format, without I/O: CPU time (getrusage, user + system) per
//! line and input MB/s, medians of interleaved repetitions.
//!
//! ```sh
//! cargo run --release --example framebench               # 1,000 MB per run, 5 repetitions
//! cargo run --release --example framebench -- --mb 200 --reps 3 --modes plain,json --shapes split
//! ```
//!
//! The input is bench/gen.c's: lines of 100 bytes (`IIII SSSSSSSSSS abc...`),
//! read chunk by chunk as the event loop reads them, either 512 KiB reads of
//! whole lines (`aligned`) or exact 64 KiB reads that split lines
//! (`split`). Each read is framed into a `FrameBuf` of the event loop's
//! capacity (512 KiB), which is "written" (emptied) whenever framing stops
//! at its limit and after every read. Modes:
//!
//! - `plain`: `[d0] line`, one frame for good;
//! - `ts`: plain with timestamps, the frame rebuilt for every read (a
//!   clock read and an RFC 3339 time per read);
//! - `color`: plain with a coloured name, one frame for good;
//! - `json`: one JSON object per line, the frame rebuilt for every read;
//! - `jsonq`: JSON of a daemon that logs JSON itself: 100-byte lines with
//!   12 quotes each, every one escaped (informative: the slower path).
//!
//! Only the framing is timed; the input is generated once, before.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use sidecar_init::format::{self, LogFormat, Style};
use sidecar_init::frame::{self, FrameBuf};
use sidecar_init::lines::LineSplitter;

/// The event loop's read size and output buffer capacity.
const READ: usize = 512 * 1024;
const CAPACITY: usize = 512 * 1024;
const LINE: usize = 100;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Plain,
    Ts,
    Color,
    Json,
    JsonQ,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "plain" => Mode::Plain,
            "ts" => Mode::Ts,
            "color" => Mode::Color,
            "json" => Mode::Json,
            "jsonq" => Mode::JsonQ,
            _ => panic!("unknown mode {s:?}"),
        }
    }

    fn style(self) -> Style {
        Style {
            format: match self {
                Mode::Json | Mode::JsonQ => LogFormat::Json,
                _ => LogFormat::Plain,
            },
            timestamps: self == Mode::Ts,
            color: self == Mode::Color,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    Aligned,
    Split,
}

/// One period of input: the bytes (with slack after them) and the reads
/// that cover them, `(start, len)`.
struct Input {
    bytes: Vec<u8>,
    reads: Vec<(usize, usize)>,
}

/// Line `seq` of daemon 0 as bench/gen.c writes it, or (`quoted`) a JSON
/// log line of the same length.
fn line(seq: usize, quoted: bool, out: &mut Vec<u8>) {
    let start = out.len();
    if quoted {
        out.extend_from_slice(
            format!(r#"{{"level":"info","seq":"{seq:010}","logger":"app","msg":""#).as_bytes(),
        );
    } else {
        out.extend_from_slice(format!("{:04} {seq:010} ", 0).as_bytes());
    }
    let mut c = seq % 26;
    while out.len() - start < LINE - if quoted { 3 } else { 1 } {
        out.push(b'a' + c as u8);
        c = (c + 1) % 26;
    }
    if quoted {
        out.extend_from_slice(b"\"}");
    }
    out.push(b'\n');
    debug_assert_eq!(out.len() - start, LINE);
}

fn input(shape: Shape, quoted: bool) -> Input {
    let mut bytes = Vec::new();
    let mut reads = Vec::new();
    match shape {
        Shape::Aligned => {
            // Four reads of as many whole lines as fit in one.
            let per_read = READ / LINE;
            for r in 0..4 {
                for i in 0..per_read {
                    line(r * per_read + i, quoted, &mut bytes);
                }
                reads.push((r * per_read * LINE, per_read * LINE));
            }
        }
        Shape::Split => {
            // 64 KiB reads: the line offsets repeat after 25 of them.
            let total = 25 * 65536;
            for i in 0..total / LINE {
                line(i, quoted, &mut bytes);
            }
            reads = (0..25).map(|r| (r * 65536, 65536)).collect();
        }
    }
    bytes.resize(bytes.len() + frame::BLOCK, 0);
    Input { bytes, reads }
}

/// This process's CPU time so far (user + system).
fn cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let d =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    d(u.user_time()) + d(u.system_time())
}

struct Run {
    cpu: Duration,
    wall: Duration,
    lines: usize,
    bytes_in: usize,
    bytes_out: usize,
}

/// Frames `total` input bytes of `input` in `mode`.
fn run(mode: Mode, input: &Input, total: usize) -> Run {
    let style = mode.style();
    let mut frame = format::daemon_frame(&style, "d0", 0, SystemTime::now());
    let timed = style.is_timed();
    let mut splitter = LineSplitter::new(64 * 1024);
    let mut buf = FrameBuf::new(CAPACITY);
    let (mut done, mut out) = (0, 0);
    let (cpu0, wall0) = (cpu(), Instant::now());
    'all: loop {
        for &(start, len) in &input.reads {
            if done >= total {
                break 'all;
            }
            if timed {
                format::update_daemon_frame(&mut frame, &style, "d0", 0, SystemTime::now());
            }
            let src = &input.bytes[start..];
            let mut pos = 0;
            while pos < len {
                pos += frame::frame_chunk(
                    &mut splitter,
                    &mut buf,
                    &frame,
                    &src[pos..],
                    len - pos,
                    CAPACITY,
                );
                // "Write" everything: the buffer is full, or the read is done.
                out += buf.len();
                black_box(buf.pending());
                buf.consume(buf.len());
            }
            done += len;
        }
    }
    let (cpu1, wall1) = (cpu(), Instant::now());
    Run {
        cpu: cpu1 - cpu0,
        wall: wall1 - wall0,
        lines: done / LINE,
        bytes_in: done,
        bytes_out: out,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let mut mb = 1000usize;
    let mut reps = 5usize;
    let mut modes = vec![Mode::Plain, Mode::Ts, Mode::Json];
    let mut shapes = vec![Shape::Aligned, Shape::Split];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the option");
        match a.as_str() {
            "--mb" => mb = value().parse().expect("--mb N"),
            "--reps" => reps = value().parse().expect("--reps N"),
            "--modes" => modes = value().split(',').map(Mode::parse).collect(),
            "--shapes" => {
                shapes = value()
                    .split(',')
                    .map(|s| match s {
                        "aligned" => Shape::Aligned,
                        "split" => Shape::Split,
                        _ => panic!("unknown shape {s:?}"),
                    })
                    .collect()
            }
            _ => panic!("unknown argument {a:?}"),
        }
    }
    let total = mb * 1_000_000;
    let inputs: Vec<(Shape, Input, Input)> = shapes
        .iter()
        .map(|&s| (s, input(s, false), input(s, true)))
        .collect();
    // results[shape][mode] = (ns/line, MB/s, wall MB/s)
    let mut results = vec![vec![(Vec::new(), Vec::new(), Vec::new()); modes.len()]; shapes.len()];
    let mut sizes = vec![vec![0.0; modes.len()]; shapes.len()];
    for rep in 0..reps {
        for (si, (_, plain_in, quoted_in)) in inputs.iter().enumerate() {
            // Rotate the order per repetition.
            for k in 0..modes.len() {
                let mi = (k + rep) % modes.len();
                let input = if modes[mi] == Mode::JsonQ {
                    quoted_in
                } else {
                    plain_in
                };
                let r = run(modes[mi], input, total);
                let cpu = r.cpu.as_secs_f64();
                let e = &mut results[si][mi];
                e.0.push(cpu * 1e9 / r.lines as f64);
                e.1.push(r.bytes_in as f64 / 1e6 / cpu);
                e.2.push(r.bytes_in as f64 / 1e6 / r.wall.as_secs_f64());
                sizes[si][mi] = r.bytes_out as f64 / r.bytes_in as f64;
            }
        }
    }
    println!(
        "{mb} MB of {LINE}-byte lines per run, {reps} repetitions, medians of CPU time (user+sys)"
    );
    println!("| shape | mode | ns/line | MB/s (CPU) | MB/s (wall) | × plain | output/input |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (si, (shape, _, _)) in inputs.iter().enumerate() {
        let plain = modes
            .iter()
            .position(|&m| m == Mode::Plain)
            .map(|i| median(results[si][i].1.clone()));
        for (mi, mode) in modes.iter().enumerate() {
            let (ns, mbs, wall) = &results[si][mi];
            let mbs = median(mbs.clone());
            let ratio = plain.map_or("—".to_string(), |p| format!("{:.3}", mbs / p));
            println!(
                "| {shape:?} | {mode:?} | {:.2} | {mbs:.0} | {:.0} | {ratio} | {:.2} |",
                median(ns.clone()),
                median(wall.clone()),
                sizes[si][mi]
            );
        }
    }
}
