//! What a hunt reads: `--since` / `--until` (event time), `--accounts`, `--regions`.
//!
//! The same [`Selection`] does two jobs. On S3 it prunes CloudTrail's key layout before anything
//! is fetched ([`Selection::keep_dir`], [`Selection::keep_object`]):
//!
//! ```text
//! [prefix/]AWSLogs/[o-<org id>/]<account>/CloudTrail/<region>/<yyyy>/<mm>/<dd>/
//!     <account>_CloudTrail_<region>_<yyyymmdd>T<hhmm>Z_<random>.json.gz
//! ```
//!
//! (`CloudTrail-Digest/` and `CloudTrail-Insight/` are not API calls and are never read.) Then,
//! for every source, S3 or local, it admits only the events inside it ([`Selection::admits`]),
//! so that a hunt over a bucket and a hunt over the same files on disk judge the same events.
//!
//! A file's stamp is when CloudTrail wrote it (to the minute); its events happened before. So a
//! file may hold events of the window when its stamp is between `since` minus
//! [`STAMP_BEFORE`] (the minute truncated, clocks) and `until` plus [`STAMP_AFTER`] (CloudTrail
//! delivers "typically within 5 minutes", sometimes later). Day folders follow their files'
//! stamps.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

/// How long before `since` a file's stamp may be and still hold events from `since` on.
pub const STAMP_BEFORE: i64 = 5 * 60;
/// How long after `until` a file may still be written with events up to `until`.
pub const STAMP_AFTER: i64 = 60 * 60;

/// The longest `--since`..`--until` span for which day folders are named directly instead of
/// listed (a few hundred LIST calls per region at most).
const MAX_NAMED_DAYS: i64 = 400;

/// What to read. Empty lists mean all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// First second of the window (inclusive).
    pub since: Option<i64>,
    /// Last second of the window (inclusive).
    pub until: Option<i64>,
    pub accounts: Vec<String>,
    pub regions: Vec<String>,
}

/// Parses a `--since` / `--until` value: RFC 3339 (`2024-08-01T12:00:00Z`), a UTC date and
/// time to the minute (`2024-08-01T12:00`) or a date (`2024-08-01`). A date given as `--until`
/// means the end of that day (`end_of_day`).
pub fn parse_time_arg(raw: &str, end_of_day: bool) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp());
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw.trim_end_matches('Z'), f) {
            return Ok(t.and_utc().timestamp());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let start = d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp();
        return Ok(if end_of_day { start + 86_399 } else { start });
    }
    Err(format!(
        "{raw:?} is not a time: use RFC 3339 (2024-08-01T12:00:00Z), 2024-08-01T12:00 (UTC) or 2024-08-01"
    ))
}

/// The fields [`Selection::admits`] reads; everything else is skipped.
#[derive(Deserialize)]
struct Where<'a> {
    #[serde(rename = "eventTime", borrow, default)]
    event_time: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "awsRegion", borrow, default)]
    aws_region: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "recipientAccountId", borrow, default)]
    recipient_account_id: Option<std::borrow::Cow<'a, str>>,
}

impl Selection {
    /// Whether the selection reads everything.
    pub fn is_all(&self) -> bool {
        self.since.is_none()
            && self.until.is_none()
            && self.accounts.is_empty()
            && self.regions.is_empty()
    }

    /// Checks the options against each other; the error names them.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(s), Some(u)) = (self.since, self.until) {
            if s > u {
                return Err(format!(
                    "--since {} is after --until {}",
                    crate::event::format_time(s),
                    crate::event::format_time(u)
                ));
            }
        }
        if let Some(a) = self
            .accounts
            .iter()
            .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "--accounts: {a:?} is not a 12-digit AWS account id"
            ));
        }
        Ok(())
    }

    /// Whether the event (its JSON text) is inside the selection: event time in the window,
    /// `awsRegion` among `--regions`, `recipientAccountId` among `--accounts`. An event whose
    /// fields cannot be read is admitted, so that the engine sets it aside with its reason.
    pub fn admits(&self, json: &str) -> bool {
        if self.is_all() {
            return true;
        }
        let Ok(w) = serde_json::from_str::<Where<'_>>(json) else {
            return true;
        };
        self.admits_fields(
            w.event_time.as_deref(),
            w.aws_region.as_deref(),
            w.recipient_account_id.as_deref(),
        )
    }

    /// [`Selection::admits`] for an event already parsed from its text.
    pub fn admits_event(&self, ev: &crate::event::CloudTrailEvent<'_>) -> bool {
        self.is_all()
            || self.admits_fields(
                ev.event_time.as_deref(),
                ev.aws_region.as_deref(),
                ev.recipient_account_id.as_deref(),
            )
    }

    fn admits_fields(
        &self,
        event_time: Option<&str>,
        aws_region: Option<&str>,
        recipient_account_id: Option<&str>,
    ) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = event_time.and_then(crate::event::parse_time) else {
                return true;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        if !self.regions.is_empty()
            && !aws_region.is_some_and(|r| self.regions.iter().any(|x| x == r))
        {
            return false;
        }
        if !self.accounts.is_empty()
            && !recipient_account_id.is_some_and(|a| self.accounts.iter().any(|x| x == a))
        {
            return false;
        }
        true
    }

    /// The days whose folders can hold files of the window, first and last.
    fn days(&self) -> (Option<NaiveDate>, Option<NaiveDate>) {
        let day = |t: i64| Utc.timestamp_opt(t, 0).single().map(|d| d.date_naive());
        (
            self.since.and_then(|s| day(s - STAMP_BEFORE)),
            self.until.and_then(|u| day(u + STAMP_AFTER)),
        )
    }

    /// Whether a folder (`dir`, a key prefix ending in `/`) can hold objects of the selection,
    /// judged by its place in CloudTrail's layout. Folders outside the layout (above
    /// `AWSLogs/`) are always kept.
    pub fn keep_dir(&self, dir: &str) -> bool {
        let Some(rel) = layout(dir) else {
            return true;
        };
        let Some(&last) = rel.segments.last() else {
            return true;
        };
        match rel.role() {
            Role::Org => last.starts_with("o-"),
            Role::Account => self.keep_account(last),
            Role::Service => last == "CloudTrail",
            Role::Region => self.regions.is_empty() || self.regions.iter().any(|r| r == last),
            Role::Date => self.keep_date(&rel.segments[rel.base() + 3..]),
            Role::Below => true,
        }
    }

    fn keep_account(&self, account: &str) -> bool {
        account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && (self.accounts.is_empty() || self.accounts.iter().any(|a| a == account))
    }

    /// `parts` = `[yyyy]`, `[yyyy, mm]` or `[yyyy, mm, dd]`: whether that year, month or day
    /// meets the window's days.
    fn keep_date(&self, parts: &[&str]) -> bool {
        let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
        let Some(nums) = nums else {
            return false;
        };
        let (lo, hi) = self.days();
        let key = |d: NaiveDate| -> Vec<u32> {
            [d.year() as u32, d.month(), d.day()][..nums.len()].to_vec()
        };
        lo.is_none_or(|lo| nums >= key(lo)) && hi.is_none_or(|hi| nums <= key(hi))
    }

    /// The folders to list in place of `dir`: `dir` itself, or, for a region folder when the
    /// window is bounded on both sides, its day folders named directly (three levels of listing
    /// saved per region).
    pub fn expand_dir(&self, dir: &str) -> Vec<String> {
        let region_level = layout(dir).is_some_and(|rel| rel.role() == Role::Region);
        if let (true, (Some(lo), Some(hi))) = (region_level, self.days()) {
            if (hi - lo).num_days() <= MAX_NAMED_DAYS {
                return lo
                    .iter_days()
                    .take_while(|d| *d <= hi)
                    .map(|d| format!("{dir}{}/", d.format("%Y/%m/%d")))
                    .collect();
            }
        }
        vec![dir.to_string()]
    }

    /// Whether an object (its key) can hold events of the selection: under CloudTrail's layout,
    /// only `.json.gz` / `.json` files of the `CloudTrail/` folder whose stamp is near the
    /// window; anything outside the layout is read (the user named it).
    pub fn keep_object(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.is_empty() {
            return false;
        }
        let dir = &key[..key.len() - name.len()];
        if let Some(rel) = layout(dir) {
            let service = rel.segments.get(rel.base() + 1);
            if service.is_some_and(|s| *s != "CloudTrail") {
                return false;
            }
            if !(name.ends_with(".json.gz") || name.ends_with(".json")) {
                return false;
            }
        }
        match stamp(name) {
            Some(t) => {
                self.since.is_none_or(|s| t >= s - STAMP_BEFORE)
                    && self.until.is_none_or(|u| t <= u + STAMP_AFTER)
            }
            None => true,
        }
    }
}

/// A key prefix's segments after its last `AWSLogs` segment (without the empty one after the
/// final `/`), and whether they start with an organisation id.
struct Layout<'a> {
    segments: Vec<&'a str>,
    org: bool,
}

fn layout(dir: &str) -> Option<Layout<'_>> {
    let segs: Vec<&str> = dir.split('/').collect();
    let at = segs.iter().rposition(|s| *s == "AWSLogs")?;
    let segments: Vec<&str> = segs[at + 1..]
        .iter()
        .copied()
        .filter(|s| !s.is_empty())
        .collect();
    let org = segments.first().is_some_and(|s| s.starts_with("o-"));
    Some(Layout { segments, org })
}

/// What the last segment of a folder under `AWSLogs/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Org,
    Account,
    /// `CloudTrail`, `CloudTrail-Digest`, ...
    Service,
    Region,
    /// `yyyy`, `yyyy/mm` or `yyyy/mm/dd`.
    Date,
    Below,
}

impl Layout<'_> {
    /// Index of the account segment.
    fn base(&self) -> usize {
        usize::from(self.org)
    }

    fn role(&self) -> Role {
        let last = self.segments.len().saturating_sub(1);
        match last.checked_sub(self.base()) {
            None => Role::Org,
            Some(0) => Role::Account,
            Some(1) => Role::Service,
            Some(2) => Role::Region,
            Some(3..=5) => Role::Date,
            Some(_) => Role::Below,
        }
    }
}

/// The time stamp of a CloudTrail file name (`..._20240801T0005Z_...`), in seconds.
pub fn stamp(name: &str) -> Option<i64> {
    name.split('_').find_map(|part| {
        if part.len() != 14 || !part.ends_with('Z') || part.as_bytes()[8] != b'T' {
            return None;
        }
        NaiveDateTime::parse_from_str(&part[..13], "%Y%m%dT%H%M")
            .ok()
            .map(|t| t.and_utc().timestamp())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        parse_time_arg(s, false).unwrap()
    }

    fn window(since: &str, until: &str) -> Selection {
        Selection {
            since: Some(t(since)),
            until: Some(parse_time_arg(until, true).unwrap()),
            ..Selection::default()
        }
    }

    #[test]
    fn times_parse_in_three_forms_and_a_date_until_is_the_end_of_that_day() {
        assert_eq!(t("2024-08-01T00:00:00Z"), 1_722_470_400);
        assert_eq!(t("2024-08-01T02:00:00+02:00"), 1_722_470_400);
        assert_eq!(t("2024-08-01T00:05"), 1_722_470_700);
        assert_eq!(t("2024-08-01"), 1_722_470_400);
        assert_eq!(
            parse_time_arg("2024-08-01", true).unwrap(),
            1_722_470_400 + 86_399
        );
        let e = parse_time_arg("yesterday", false).unwrap_err();
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn file_stamps_are_read_from_cloudtrail_names() {
        assert_eq!(
            stamp("111122223333_CloudTrail_us-east-1_20240801T0005Z_abcdEFGH12345678.json.gz"),
            Some(1_722_470_700)
        );
        assert_eq!(stamp("events.json.gz"), None);
        assert_eq!(stamp("a_20241301T0005Z_b.json"), None);
    }

    #[test]
    fn folders_are_pruned_by_layout_account_region_and_day() {
        let mut s = window("2024-08-02", "2024-08-02");
        s.accounts = vec!["111122223333".into()];
        s.regions = vec!["eu-west-1".into()];
        let keep = |d: &str| s.keep_dir(d);
        // Above the layout: everything.
        assert!(keep("logs/"));
        assert!(keep("logs/AWSLogs/"));
        // Organisation trail.
        assert!(keep("logs/AWSLogs/o-abc123def4/"));
        assert!(keep("AWSLogs/o-abc123def4/111122223333/"));
        assert!(!keep("AWSLogs/o-abc123def4/444455556666/"));
        assert!(!keep(
            "AWSLogs/o-abc123def4/111122223333/CloudTrail-Digest/"
        ));
        assert!(!keep(
            "AWSLogs/o-abc123def4/111122223333/CloudTrail-Insight/"
        ));
        assert!(keep("AWSLogs/o-abc123def4/111122223333/CloudTrail/"));
        assert!(keep(
            "AWSLogs/o-abc123def4/111122223333/CloudTrail/eu-west-1/"
        ));
        assert!(!keep(
            "AWSLogs/o-abc123def4/111122223333/CloudTrail/us-east-1/"
        ));
        // Account trail.
        assert!(!keep("AWSLogs/444455556666/"));
        assert!(!keep("AWSLogs/not-an-account/"));
        let r = "AWSLogs/111122223333/CloudTrail/eu-west-1/";
        assert!(keep(&format!("{r}2024/")));
        assert!(!keep(&format!("{r}2023/")));
        assert!(keep(&format!("{r}2024/08/")));
        assert!(!keep(&format!("{r}2024/07/")));
        // The day before holds files of the window only in its last minutes (the slack before
        // `since`); the day after can (late delivery); the days beyond cannot.
        assert!(keep(&format!("{r}2024/08/01/")));
        assert!(!keep(&format!("{r}2024/07/31/")));
        assert!(keep(&format!("{r}2024/08/02/")));
        assert!(keep(&format!("{r}2024/08/03/")));
        assert!(!keep(&format!("{r}2024/08/04/")));
        assert!(!keep(&format!("{r}2024/08/xx/")));
        // No window, no list: every account and region.
        let all = Selection::default();
        assert!(all.keep_dir(&format!("{r}1999/01/01/")));
        assert!(all.keep_dir("AWSLogs/444455556666/CloudTrail/us-east-1/"));
        assert!(!all.keep_dir("AWSLogs/444455556666/CloudTrail-Digest/"));
    }

    #[test]
    fn a_bounded_window_names_the_day_folders_of_a_region() {
        let s = window("2024-08-01T23:58:00Z", "2024-08-02T10:00:00Z");
        let r = "AWSLogs/o-abc123def4/111122223333/CloudTrail/us-east-1/";
        assert_eq!(
            s.expand_dir(r),
            vec![format!("{r}2024/08/01/"), format!("{r}2024/08/02/"),]
        );
        // Not a region folder: listed as it is.
        assert_eq!(s.expand_dir("AWSLogs/"), vec!["AWSLogs/".to_string()]);
        let a = "AWSLogs/111122223333/CloudTrail/us-east-1/";
        assert_eq!(s.expand_dir(a).len(), 2);
        // Unbounded: listed.
        let open = Selection {
            since: s.since,
            ..Selection::default()
        };
        assert_eq!(open.expand_dir(a), vec![a.to_string()]);
    }

    #[test]
    fn objects_are_kept_by_their_stamp_with_slack_on_both_sides() {
        let s = window("2024-08-02T00:00:00Z", "2024-08-02T12:00:00Z");
        let dir = "AWSLogs/111122223333/CloudTrail/us-east-1/2024/08/02/";
        let name =
            |stamp: &str| format!("{dir}111122223333_CloudTrail_us-east-1_{stamp}_abc.json.gz");
        assert!(!s.keep_object(&name("20240801T2354Z")));
        assert!(s.keep_object(&name("20240801T2355Z")));
        assert!(s.keep_object(&name("20240802T0600Z")));
        assert!(s.keep_object(&name("20240802T1300Z")));
        assert!(!s.keep_object(&name("20240802T1301Z")));
        // Not CloudTrail files of the layout.
        assert!(!s.keep_object(&format!("{dir}notes.txt")));
        assert!(
            !s.keep_object("AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2024/08/02/x.json.gz")
        );
        // Outside the layout without a stamp: the user named it.
        assert!(s.keep_object("exports/august.json.gz"));
    }

    #[test]
    fn events_are_admitted_by_time_region_and_account() {
        let mut s = window("2024-08-02T00:00:00Z", "2024-08-02T12:00:00Z");
        let ev = |time: &str, region: &str, acct: &str| {
            serde_json::json!({"eventTime": time, "awsRegion": region, "recipientAccountId": acct,
                "eventName": "x", "requestParameters": {"eventTime": "1999-01-01T00:00:00Z"}})
            .to_string()
        };
        assert!(s.admits(&ev("2024-08-02T00:00:00Z", "us-east-1", "111122223333")));
        assert!(s.admits(&ev("2024-08-02T12:00:00Z", "us-east-1", "111122223333")));
        assert!(!s.admits(&ev("2024-08-01T23:59:59Z", "us-east-1", "111122223333")));
        assert!(!s.admits(&ev("2024-08-02T12:00:01Z", "us-east-1", "111122223333")));
        s.regions = vec!["eu-west-1".into()];
        assert!(!s.admits(&ev("2024-08-02T01:00:00Z", "us-east-1", "111122223333")));
        assert!(s.admits(&ev("2024-08-02T01:00:00Z", "eu-west-1", "111122223333")));
        s.accounts = vec!["444455556666".into()];
        assert!(!s.admits(&ev("2024-08-02T01:00:00Z", "eu-west-1", "111122223333")));
        assert!(s.admits(&ev("2024-08-02T01:00:00Z", "eu-west-1", "444455556666")));
        // Unreadable: admitted, for the engine to set aside with its reason.
        assert!(s.admits("{not json"));
    }

    #[test]
    fn option_errors_name_the_option() {
        let mut s = window("2024-08-03", "2024-08-02");
        assert!(s.check().unwrap_err().contains("--since"));
        s = Selection {
            accounts: vec!["12345".into()],
            ..Selection::default()
        };
        assert!(s.check().unwrap_err().contains("--accounts"));
    }
}
