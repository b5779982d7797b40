//! Statistics over tasks (`GET /api/stats`): the windows a caller may ask for, what the
//! repository is asked, and the aggregates it answers with. Every figure is computed from
//! the tasks created inside the window, so it is the same after a restart and on every
//! instance sharing the database. Stage durations are counted in a histogram of fixed
//! buckets ([`duration_bucket`]), so percentiles are read from bucket counts. No I/O here.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::domain::TaskState;

/// A window of time ending now: `1h`, `24h`, `7d` or `30d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsWindow {
    Hour,
    Day,
    Week,
    Month,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

impl StatsWindow {
    pub const ALL: [StatsWindow; 4] = [Self::Hour, Self::Day, Self::Week, Self::Month];

    /// The window named `raw` (`1h`, `24h`, `7d`, `30d`).
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
            Self::Month => "30d",
        }
    }

    /// How far back the window reaches, in milliseconds.
    pub fn span_ms(self) -> i64 {
        match self {
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
            Self::Week => 7 * DAY_MS,
            Self::Month => 30 * DAY_MS,
        }
    }

    /// The width of one bar of its time series: 5 minutes for `1h`, an hour for `24h`, a
    /// (UTC) day for `7d` and `30d`.
    pub fn grain(self) -> StatsGrain {
        match self {
            Self::Hour => StatsGrain::FiveMinutes,
            Self::Day => StatsGrain::Hour,
            Self::Week | Self::Month => StatsGrain::Day,
        }
    }

    pub fn bucket_ms(self) -> i64 {
        self.grain().ms()
    }

    /// The question for the repository at `now`: the window starts at the beginning of
    /// the bucket holding `now - span`, so every bucket of the series is whole-width and
    /// aligned (hours on the hour, days at midnight UTC).
    pub fn query(self, now: i64, owner: Option<String>, per_owner: bool) -> StatsQuery {
        let bucket_ms = self.bucket_ms();
        let since = (now - self.span_ms()).div_euclid(bucket_ms) * bucket_ms;
        StatsQuery {
            since,
            until: now + 1,
            grain: self.grain(),
            owner,
            per_owner,
        }
    }
}

/// The widths of bucket the statistics are kept at (the database keeps finished tasks'
/// figures summed per bucket of each width, so a window is read as a few dozen rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsGrain {
    FiveMinutes,
    Hour,
    /// A UTC day.
    Day,
}

impl StatsGrain {
    pub const ALL: [StatsGrain; 3] = [Self::FiveMinutes, Self::Hour, Self::Day];

    pub fn ms(self) -> i64 {
        match self {
            Self::FiveMinutes => 5 * MINUTE_MS,
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }
}

/// What the repository computes: the tasks created in the buckets from `since` (aligned to
/// the grain) to the one holding `until - 1` (Unix ms), the last one whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsQuery {
    pub since: i64,
    pub until: i64,
    /// The width of one bucket of [`StatsGroup::bucket`].
    pub grain: StatsGrain,
    /// Only this owner's tasks (a key that is not an administrator); `None`: every task.
    pub owner: Option<String>,
    /// Also count per owner ([`TaskStats::owners`]).
    pub per_owner: bool,
}

impl StatsQuery {
    pub fn bucket_ms(&self) -> i64 {
        self.grain.ms()
    }

    /// How many buckets the window spans.
    pub fn buckets(&self) -> i64 {
        (self.until - self.since + self.bucket_ms() - 1) / self.bucket_ms()
    }

    /// The end (exclusive) of the window's last bucket.
    pub fn end(&self) -> i64 {
        self.since + self.buckets() * self.bucket_ms()
    }
}

/// Tasks created in one bucket, in one state, of one provider, ending with one error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsGroup {
    /// `(created_at - since) / bucket_ms()`.
    pub bucket: i64,
    pub state: TaskState,
    pub provider: String,
    /// Only on tasks that failed, were canceled or expired (`None` when they carry none).
    pub error_code: Option<String>,
    pub tasks: i64,
    /// Credits the provider charged for them.
    pub credits: i64,
}

/// Tasks of one owner in one state (owner `None`: tasks made without a key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerGroup {
    pub owner: Option<String>,
    pub state: TaskState,
    pub tasks: i64,
    pub credits: i64,
}

/// The R20 preferred numbers (ISO 3), times 100: the steps of the histogram's decades.
const R20: [i64; 20] = [
    100, 112, 125, 140, 160, 180, 200, 224, 250, 280, 315, 355, 400, 450, 500, 560, 630, 710, 800,
    900,
];

/// The largest bucket bound: 10^10 ms, about 115 days. Longer durations count in it.
pub const LONGEST_DURATION_MS: i64 = 10_000_000_000;

/// The upper bounds (ms) of the duration histogram's buckets, ascending: every millisecond
/// to 10 ms, then the R20 series (1, 1.12, 1.25, 1.4, 1.6, 1.8, 2, 2.24, 2.5, 2.8, 3.15,
/// 3.55, 4, 4.5, 5, 5.6, 6.3, 7.1, 8, 9 × 10ⁿ ms, rounded up to whole milliseconds) to
/// [`LONGEST_DURATION_MS`]. Each bound is at most 15 % above the bucket's smallest value.
/// The database holds the same list (`stats_duration_buckets`, in the migrations; the
/// repository contract checks that they agree).
pub fn duration_buckets() -> &'static [i64] {
    static BUCKETS: LazyLock<Vec<i64>> = LazyLock::new(|| {
        let mut bounds: Vec<i64> = (0..=10).collect();
        let mut scale = 1;
        while bounds.last() < Some(&LONGEST_DURATION_MS) {
            for step in R20 {
                // step × 10^scale / 100, rounded up.
                let bound = (step * 10_i64.pow(scale) + 99) / 100;
                if bound > *bounds.last().unwrap_or(&0) && bound < LONGEST_DURATION_MS {
                    bounds.push(bound);
                }
            }
            scale += 1;
            if 10_i64.pow(scale) >= LONGEST_DURATION_MS {
                bounds.push(LONGEST_DURATION_MS);
            }
        }
        bounds
    });
    &BUCKETS
}

/// The bucket a duration counts in, named by its upper bound: the smallest bound at least
/// `ms` (0 for a negative duration, [`LONGEST_DURATION_MS`] for a longer one).
pub fn duration_bucket(ms: i64) -> i64 {
    let buckets = duration_buckets();
    let at = buckets.partition_point(|&le| le < ms);
    buckets.get(at).copied().unwrap_or(LONGEST_DURATION_MS)
}

/// Nearest-rank percentiles of one stage's durations, in milliseconds, at the histogram's
/// resolution: each is the upper bound of the bucket holding the value at that rank, so
/// never below the exact value and at most 15 % above it (exact up to 10 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    /// How many tasks have the stage's two timestamps.
    pub count: i64,
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub p99_ms: i64,
}

impl Percentiles {
    /// The 1-based rank of the `p`th percentile among `count` sorted values (nearest rank:
    /// the smallest value with at least p % of the values at or below it).
    pub fn rank(p: i64, count: i64) -> i64 {
        ((count * p + 99) / 100).max(1)
    }

    /// The percentiles of a histogram: `(bucket upper bound, count)` pairs in any order, a
    /// bound possibly more than once. `None` when it counts nothing.
    pub fn from_histogram(mut buckets: Vec<(i64, i64)>) -> Option<Self> {
        buckets.sort_unstable();
        let count: i64 = buckets.iter().map(|b| b.1).sum();
        if count <= 0 {
            return None;
        }
        let at = |p: i64| {
            let rank = Self::rank(p, count);
            let mut seen = 0;
            for &(le, n) in &buckets {
                seen += n;
                if seen >= rank {
                    return le;
                }
            }
            buckets.last().map_or(0, |b| b.0)
        };
        Some(Self {
            count,
            p50_ms: at(50),
            p95_ms: at(95),
            p99_ms: at(99),
        })
    }
}

/// The stages a task's time is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Created → handed to the provider (`submitted_at - created_at`), for every task that
    /// got that far: waiting in the queue, for a rate window or a backoff.
    Queue,
    /// Handed to the provider → results stored (`completed_at - submitted_at`), for tasks
    /// that succeeded: the provider's generation, its answer and the ingest.
    Provider,
    /// Created → results stored (`completed_at - created_at`), for tasks that succeeded.
    EndToEnd,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Self::Queue, Self::Provider, Self::EndToEnd];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Provider => "provider",
            Self::EndToEnd => "endToEnd",
        }
    }

    /// Its name in the database's rollup (`stats_durations.stage`).
    pub fn stored(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Provider => "provider",
            Self::EndToEnd => "end_to_end",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.stored() == raw)
    }
}

/// The repository's answer to a [`StatsQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub groups: Vec<StatsGroup>,
    /// Percentiles of each stage that has at least one duration, in [`Stage::ALL`] order.
    pub stages: Vec<(Stage, Percentiles)>,
    /// Filled when [`StatsQuery::per_owner`] asked for it.
    pub owners: Vec<OwnerGroup>,
}

/// The key of a [`StatsGroup`]: bucket, state, provider, error code.
type GroupKey = (i64, TaskState, String, Option<String>);

/// Sums tasks and credits into [`StatsGroup`]s and [`OwnerGroup`]s, whatever order and
/// however split the counts come in.
#[derive(Debug, Default)]
pub struct StatsTally {
    groups: BTreeMap<GroupKey, (i64, i64)>,
    owners: BTreeMap<(Option<String>, TaskState), (i64, i64)>,
}

impl StatsTally {
    pub fn add_group(&mut self, key: GroupKey, tasks: i64, credits: i64) {
        let sum = self.groups.entry(key).or_default();
        sum.0 += tasks;
        sum.1 += credits;
    }

    pub fn add_owner(&mut self, owner: Option<String>, state: TaskState, tasks: i64, credits: i64) {
        let sum = self.owners.entry((owner, state)).or_default();
        sum.0 += tasks;
        sum.1 += credits;
    }

    /// The groups and owners, ordered by their keys, with these stage percentiles.
    pub fn into_stats(self, stages: Vec<(Stage, Percentiles)>) -> TaskStats {
        TaskStats {
            groups: self
                .groups
                .into_iter()
                .map(
                    |((bucket, state, provider, error_code), (tasks, credits))| StatsGroup {
                        bucket,
                        state,
                        provider,
                        error_code,
                        tasks,
                        credits,
                    },
                )
                .collect(),
            stages,
            owners: self
                .owners
                .into_iter()
                .map(|((owner, state), (tasks, credits))| OwnerGroup {
                    owner,
                    state,
                    tasks,
                    credits,
                })
                .collect(),
        }
    }
}

impl TaskStats {
    /// The percentiles of `stage`, if any task has its timestamps.
    pub fn stage(&self, stage: Stage) -> Option<Percentiles> {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_align_their_buckets() {
        for w in StatsWindow::ALL {
            assert_eq!(StatsWindow::parse(w.as_str()), Some(w));
        }
        for bad in ["", "1d", "24H", "2h", "30d "] {
            assert_eq!(StatsWindow::parse(bad), None, "{bad:?}");
        }
        // 2024-01-02T10:17:00Z
        let now = 1_704_190_620_000;
        let q = StatsWindow::Day.query(now, None, false);
        assert_eq!(q.since % HOUR_MS, 0, "on the hour");
        assert!(now - q.since >= DAY_MS && now - q.since < DAY_MS + HOUR_MS);
        assert_eq!(q.buckets(), 25, "24 whole hours and the current one");
        let q = StatsWindow::Week.query(now, Some("alice".into()), false);
        assert_eq!(q.since % DAY_MS, 0, "at midnight UTC");
        assert_eq!(q.buckets(), 8);
        assert_eq!(StatsWindow::Hour.query(now, None, true).buckets(), 13);
        assert_eq!(StatsWindow::Month.query(now, None, true).buckets(), 31);
    }

    #[test]
    fn nearest_rank() {
        assert_eq!(Percentiles::rank(50, 1), 1);
        assert_eq!(Percentiles::rank(99, 1), 1);
        assert_eq!(Percentiles::rank(50, 4), 2);
        assert_eq!(Percentiles::rank(95, 4), 4);
        assert_eq!(Percentiles::rank(50, 100), 50);
        assert_eq!(Percentiles::rank(95, 100), 95);
        assert_eq!(Percentiles::rank(99, 101), 100);
        assert_eq!(Percentiles::rank(50, 0), 1);
    }

    #[test]
    fn duration_buckets_are_exact_to_10_ms_then_within_15_percent() {
        let b = duration_buckets();
        assert_eq!(b.len(), 191);
        assert_eq!(&b[..14], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14]);
        assert_eq!(
            &b[41..51],
            [355, 400, 450, 500, 560, 630, 710, 800, 900, 1000]
        );
        assert_eq!(b.last(), Some(&LONGEST_DURATION_MS));
        for pair in b.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            // The bound against the bucket's smallest value (the previous bound + 1).
            assert!(pair[1] * 100 <= (pair[0] + 1) * 115, "{pair:?}");
        }
        assert_eq!(duration_bucket(-5), 0);
        assert_eq!(duration_bucket(7), 7);
        assert_eq!(duration_bucket(11), 12);
        assert_eq!(duration_bucket(1000), 1000);
        assert_eq!(duration_bucket(1001), 1120);
        assert_eq!(duration_bucket(i64::MAX), LONGEST_DURATION_MS);
    }

    #[test]
    fn percentiles_from_a_histogram_are_nearest_rank_bounds() {
        assert_eq!(Percentiles::from_histogram(vec![]), None);
        assert_eq!(Percentiles::from_histogram(vec![(100, 0)]), None);
        // 100 values: 50 at most 100 ms, 45 at most 500, 4 at most 1000, 1 at most 2000 (a
        // bound given twice adds up).
        let p =
            Percentiles::from_histogram(vec![(2000, 1), (500, 40), (100, 50), (1000, 4), (500, 5)]);
        assert_eq!(
            p,
            Some(Percentiles {
                count: 100,
                p50_ms: 100,
                p95_ms: 500,
                p99_ms: 1000,
            })
        );
        // The exact nearest-rank value's bucket, for any values.
        let values: Vec<i64> = (0..1000).map(|i| (i * 7919) % 100_000).collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let mut histogram = std::collections::BTreeMap::new();
        for v in &values {
            *histogram.entry(duration_bucket(*v)).or_insert(0) += 1;
        }
        let p = Percentiles::from_histogram(histogram.into_iter().collect()).unwrap();
        let exact = |p: i64| sorted[usize::try_from(Percentiles::rank(p, 1000) - 1).unwrap()];
        assert_eq!(p.p50_ms, duration_bucket(exact(50)));
        assert_eq!(p.p95_ms, duration_bucket(exact(95)));
        assert_eq!(p.p99_ms, duration_bucket(exact(99)));
    }
}
