//! Site load management, pure: how much current the chargers may use
//! together, and how it is shared among the sessions that want it —
//! fairly, never below the minimum a session can run at (6 A, IEC 61851),
//! never above a charger's own maximum, and taking turns when there is not
//! enough for everyone.

/// One charging session asking for current.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// The smallest current it can run at (6 A unless the charger needs more).
    pub min: f64,
    /// The most it may get: its charger's maximum, capped by its schedule.
    pub max: f64,
    /// Seconds since it last got current (`Some`) or since it last started
    /// getting current (`None` in `waiting`, `Some` in `running`).
    pub waiting_since: Option<i64>,
    /// When it last started getting current, if it has current now.
    pub running_since: Option<i64>,
}

/// Current the chargers may draw together, per phase: the fuse limit minus
/// the margin minus what the rest of the site draws (the grid reading less
/// what the chargers draw themselves), on the most loaded phase.
pub fn available(fuse: f64, margin: f64, grid: [f64; 3], chargers_draw: [f64; 3]) -> f64 {
    (0..3)
        .map(|p| fuse - margin - (grid[p] - chargers_draw[p]).max(0.0))
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// Share `available` amperes among `demands`; returns each one's share in
/// the same order (0 means paused). Sessions that cannot all get their
/// minimum take turns: a running session keeps its place for `turn`
/// seconds, then the one that has waited longest goes first.
pub fn share(available: f64, demands: &[Demand], now: i64, turn: i64) -> Vec<f64> {
    let mut out = vec![0.0; demands.len()];
    // Who goes first when not everyone fits.
    let mut order: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].max >= demands[i].min)
        .collect();
    let rank = |d: &Demand| match d.running_since {
        Some(since) if now - since < turn => (0, since),
        // The one that has run longest makes room first.
        Some(since) => (2, -since),
        None => (1, d.waiting_since.unwrap_or(now)),
    };
    order.sort_by_key(|&i| rank(&demands[i]));
    // Admit sessions while their minimums fit.
    let mut admitted = Vec::new();
    let mut left = available;
    for &i in &order {
        if demands[i].min <= left + 1e-9 {
            left -= demands[i].min;
            out[i] = demands[i].min;
            admitted.push(i);
        }
    }
    // Water-fill the rest up to each one's maximum, equally.
    loop {
        let open: Vec<usize> = admitted
            .iter()
            .copied()
            .filter(|&i| out[i] + 1e-9 < demands[i].max)
            .collect();
        if open.is_empty() || left <= 1e-9 {
            break;
        }
        let each = left / open.len() as f64;
        for &i in &open {
            let give = each.min(demands[i].max - out[i]);
            out[i] += give;
            left -= give;
        }
    }
    // OCPP limits go in steps of 0.1 A; round down so the sum stays under.
    for v in &mut out {
        *v = (*v * 10.0 + 1e-6).floor() / 10.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(max: f64, running_since: Option<i64>, waiting_since: Option<i64>) -> Demand {
        Demand {
            min: 6.0,
            max,
            waiting_since,
            running_since,
        }
    }

    #[test]
    fn fair_with_caps_and_redistribution() {
        let got = share(
            40.0,
            &[
                d(32.0, Some(0), None),
                d(10.0, Some(0), None),
                d(32.0, Some(0), None),
            ],
            10,
            900,
        );
        assert_eq!(got, vec![15.0, 10.0, 15.0]);
        let got = share(
            200.0,
            &[d(32.0, Some(0), None), d(16.0, Some(0), None)],
            10,
            900,
        );
        assert_eq!(got, vec![32.0, 16.0], "never above a charger's maximum");
        let got = share(20.0, &[d(32.0, Some(0), None); 3], 10, 900);
        assert_eq!(
            got,
            vec![6.6, 6.6, 6.6],
            "rounded down to 0.1 A, sum within the budget"
        );
    }

    #[test]
    fn never_below_six_amps_sessions_take_turns() {
        // 13 A for three sessions: two run at 6.5 A, one waits.
        let demands = [
            d(32.0, Some(100), None),
            d(32.0, Some(100), None),
            d(32.0, None, Some(100)),
        ];
        let got = share(13.0, &demands, 200, 900);
        assert_eq!(got, vec![6.5, 6.5, 0.0]);
        // After a turn (900 s) the waiting one goes first; the running one
        // that started earliest makes room.
        let demands = [
            d(32.0, Some(100), None),
            d(32.0, Some(150), None),
            d(32.0, None, Some(100)),
        ];
        let got = share(13.0, &demands, 1100, 900);
        assert_eq!(got, vec![0.0, 6.5, 6.5]);
        // Not even one minimum: everyone pauses.
        assert_eq!(share(5.9, &demands, 1100, 900), vec![0.0; 3]);
        // A session whose schedule allows less than its minimum is not served.
        assert_eq!(share(30.0, &[d(3.0, None, Some(0))], 10, 900), vec![0.0]);
    }

    #[test]
    fn available_counts_only_the_rest_of_the_site() {
        // 63 A fuse, 3 A margin, 40 A on L2 of which the chargers draw 20 A.
        assert_eq!(
            available(63.0, 3.0, [30.0, 40.0, 25.0], [20.0, 20.0, 20.0]),
            40.0
        );
        // Overloaded by others: nothing left, never negative.
        assert_eq!(available(63.0, 3.0, [70.0, 10.0, 10.0], [0.0; 3]), 0.0);
    }

    /// A simulated day: a house load that swings every minute, cars with
    /// their own onboard limits, and a check after every allocation that
    /// the fuse holds on the worst phase.
    #[test]
    fn fuse_never_exceeded_in_a_simulated_day() {
        let fuse = 50.0;
        let margin = 2.0;
        let mut rng = fastrand::Rng::with_seed(7);
        let car_limit = [32.0, 16.0, 10.0, 32.0, 20.0];
        let mut alloc = [0.0f64; 5];
        let mut running: [Option<i64>; 5] = [None; 5];
        let mut waiting: [Option<i64>; 5] = [Some(0); 5];
        let mut served = [0u32; 5];
        for minute in 0..(24 * 60) {
            let now = minute * 60;
            let house = [rng.f64() * 30.0, rng.f64() * 40.0, rng.f64() * 20.0];
            // Each car draws what it was given, up to its own limit.
            let draw: Vec<f64> = (0..5).map(|i| alloc[i].min(car_limit[i])).collect();
            let total: f64 = draw.iter().sum();
            let grid = [house[0] + total, house[1] + total, house[2] + total];
            let avail = available(fuse, margin, grid, [total; 3]);
            let demands: Vec<Demand> = (0..5)
                .map(|i| Demand {
                    min: 6.0,
                    max: car_limit[i],
                    waiting_since: waiting[i],
                    running_since: running[i],
                })
                .collect();
            let got = share(avail, &demands, now, 900);
            for i in 0..5 {
                assert!(
                    got[i] == 0.0 || (6.0..=car_limit[i]).contains(&got[i]),
                    "{got:?}"
                );
                if got[i] > 0.0 {
                    served[i] += 1;
                    waiting[i] = None;
                    running[i] = running[i].or(Some(now));
                } else {
                    running[i] = None;
                    waiting[i] = waiting[i].or(Some(now));
                }
                alloc[i] = got[i];
            }
            let new_total: f64 = (0..5).map(|i| alloc[i].min(car_limit[i])).sum();
            for (p, h) in house.iter().enumerate() {
                assert!(
                    h + new_total <= fuse - margin + 1e-6,
                    "minute {minute}, phase {p}: {} A",
                    h + new_total
                );
            }
        }
        // Taking turns: every car got current for a good part of the day.
        assert!(served.iter().all(|&s| s > 200), "{served:?}");
    }
}
