//! What the benchmark prints: its header, and one row per number of
//! chargers with each path's latency, CPU and memory and the ratios.

use super::*;

/// Print one N's figures: pooled percentiles over all rounds, the ratios
/// to direct, and the spread of the per-round p99 ratios (how much to trust
/// the pooled one on a noisy machine).
pub(super) fn print_row(n: usize, per_charger: usize, idle_rss: u64, paths: &mut [Path3]) {
    let msgs = (n * per_charger) as f64;
    for x in paths.iter_mut() {
        x.samples.sort_unstable();
    }
    let direct_p99 = paths[0].p(0.99).as_secs_f64();
    let cells: Vec<(String, String)> = paths
        .iter()
        .map(|x| {
            let (p50, p99) = (x.p(0.50), x.p(0.99));
            (
                format!("{} / {}", ms(p50), ms(p99)),
                format!("{:.2}x", p99.as_secs_f64() / direct_p99),
            )
        })
        .collect();
    let cell = |i: usize| cells.get(i).cloned().unwrap_or(("-".into(), "-".into()));
    let ngx = paths
        .iter()
        .position(|x| x.name == "nginx")
        .unwrap_or(usize::MAX);
    let nginx_rss = paths
        .iter()
        .find(|x| x.name == "nginx")
        .map_or("-".into(), |x| format!("{} KB", x.rss_kb));
    println!(
        "{n:>6} | {:>22} | {:>22} | {:>22} | {:>9} {:>9} | {:>7} KB {:>10} | {:>12.0}",
        cell(0).0,
        cell(1).0,
        cell(ngx).0,
        cell(1).1,
        cell(ngx).1,
        paths[1].rss_kb,
        nginx_rss,
        msgs / paths[1].wall.as_secs_f64(),
    );
    for x in paths.iter().skip(1) {
        let mut ratios: Vec<f64> = x
            .round_p99
            .iter()
            .zip(&paths[0].round_p99)
            .map(|(a, d)| a.as_secs_f64() / d.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        // The latency a relay adds, in absolute terms: what an operator
        // weighs against the tens of ms of a real internet round trip.
        let added = |q: f64| (x.p(q).as_secs_f64() - paths[0].p(q).as_secs_f64()) * 1e6;
        println!(
            "{:>6}   {:<10} p99/direct per round: median {:.2}x (range {:.2}x-{:.2}x over {} rounds); adds {:+.0} us at p50, {:+.0} us at p99; CPU {:.1} us/msg, {:.2}% of a core idle",
            "",
            x.name,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            ratios.len(),
            added(0.50),
            added(0.99),
            x.cpu_ticks as f64 / TICKS_PER_SEC * 1e6 / msgs,
            x.idle_ticks as f64 / TICKS_PER_SEC / IDLE_WINDOW.as_secs_f64() * 100.0,
        );
    }
    println!(
        "{:>6}   chargegate RSS per charger above idle: {:.1} KB (target: 25 MB + 64 KB per charger = {} KB at N={n})",
        "",
        (paths[1].rss_kb.saturating_sub(idle_rss)) as f64 / n as f64,
        25 * 1024 + 64 * n
    );
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The table's title and header.
pub(super) fn print_header(args: &BenchArgs, sink: std::net::SocketAddr, idle_rss: u64) {
    let load = if args.rate > 0.0 {
        format!("paced at {} heartbeats/s in all", args.rate)
    } else {
        "flood: each charger sends again as soon as it is answered".into()
    };
    println!(
        "chargegate bench: {} rounds of {} messages per charger ({:?} mix; {load}), sink CSMS on {sink}; gateway idle RSS {} KB",
        args.rounds, args.messages, args.mix, idle_rss
    );
    println!(
        "{:>6} | {:>22} | {:>22} | {:>22} | {:>9} {:>9} | {:>10} {:>10} | {:>12}",
        "N",
        "direct p50/p99",
        "chargegate p50/p99",
        "nginx p50/p99",
        "cg/dir",
        "ngx/dir",
        "cg RSS",
        "ngx RSS",
        "cg msg/s"
    );
}
