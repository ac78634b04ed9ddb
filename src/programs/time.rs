//! Time in each person's own zone: durations, local times of day, quiet hours and local days,
//! with DST-correct calendar arithmetic by `jiff` (its time zone database is built in, so the
//! answers do not depend on the machine's).
//!
//! Rules, all in the contact's zone:
//! - `for: "1d"` is one calendar day: 08:00 stays 08:00 across a DST change; `"2h"` is two
//!   hours of elapsed time.
//! - `until: "08:00"` is the next 08:00 strictly after now; a time that does not exist that day
//!   (skipped by DST) is taken as the same time after the jump, a repeated one as its first.
//! - Quiet hours `21:00-08:00` (wrapping midnight) or `12:00-14:00`: a fire inside them moves to
//!   their end, never dropped.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Unit, Zoned};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest duration a program may wait in one step.
const MAX_DAYS: f64 = 400.0;

/// The zone named, if the database knows it.
pub fn zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name).ok()
}

/// `ms` (Unix milliseconds) in `tz`.
pub fn zoned(ms: i64, tz: &TimeZone) -> Zoned {
    Timestamp::from_millisecond(ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

fn millis(z: &Zoned) -> i64 {
    z.timestamp().as_millisecond()
}

/// A duration as people write it: `"2h"`, `"1d"`, `"90m"`, `"1 week"`, or ISO 8601 `"P1D"`.
#[derive(Debug, Clone)]
pub struct Duration {
    text: String,
    span: Span,
}

impl Duration {
    /// `from` plus this duration, in `tz` (days are calendar days there).
    pub fn after(&self, from_ms: i64, tz: &TimeZone) -> Option<i64> {
        zoned(from_ms, tz)
            .checked_add(self.span)
            .ok()
            .map(|z| millis(&z))
    }

    /// Roughly how long, in milliseconds (days as 24 h): for limits and comparisons only.
    pub fn approx_ms(&self) -> i64 {
        self.span
            .total((Unit::Millisecond, Date::constant(2026, 1, 1)))
            .map(|ms| ms as i64)
            .unwrap_or(i64::MAX)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Duration, String> {
        let span: Span = s.trim().parse().map_err(|_| {
            format!("{s:?} is not a duration (e.g. \"30m\", \"2h\", \"1d\", \"1 week\")")
        })?;
        let days = span
            .total((Unit::Day, Date::constant(2026, 1, 1)))
            .map_err(|e| format!("{s:?}: {e}"))?;
        if days.is_nan() || days <= 0.0 {
            return Err(format!("{s:?}: a duration must be positive"));
        }
        if days > MAX_DAYS {
            return Err(format!("{s:?}: at most {MAX_DAYS} days"));
        }
        Ok(Duration {
            text: s.trim().to_owned(),
            span,
        })
    }
}

/// A signed offset in days for date-field waits (`"-1d"`, `"2d"`, `"0d"`).
#[derive(Debug, Clone)]
pub struct Offset {
    text: String,
    pub span: Span,
}

impl FromStr for Offset {
    type Err = String;

    fn from_str(s: &str) -> Result<Offset, String> {
        let span: Span = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an offset (e.g. \"-1d\", \"3d\")"))?;
        let days = span
            .total((Unit::Day, Date::constant(2026, 1, 1)))
            .map_err(|e| format!("{s:?}: {e}"))?;
        if days.abs() > MAX_DAYS {
            return Err(format!("{s:?}: at most {MAX_DAYS} days either way"));
        }
        Ok(Offset {
            text: s.trim().to_owned(),
            span,
        })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A local time of day, `"HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime(pub Time);

impl FromStr for LocalTime {
    type Err = String;

    fn from_str(s: &str) -> Result<LocalTime, String> {
        let bad = || format!("{s:?} is not a local time (\"HH:MM\", 00:00-23:59)");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        Time::new(h, m, 0, 0).map(LocalTime).map_err(|_| bad())
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

/// `"08:00"` (the next 08:00) or `"mon 09:00"` (the next Monday at 09:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Until {
    pub weekday: Option<Weekday>,
    pub time: LocalTime,
}

impl Until {
    /// The first such local time strictly after `from_ms`, in `tz`.
    pub fn next_after(&self, from_ms: i64, tz: &TimeZone) -> Option<i64> {
        let now = zoned(from_ms, tz);
        let mut date = now.date();
        for _ in 0..9 {
            if self.weekday.is_none_or(|w| date.weekday() == w) {
                let at = date.to_datetime(self.time.0).to_zoned(tz.clone()).ok()?;
                if at.timestamp() > now.timestamp() {
                    return Some(millis(&at));
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

impl FromStr for Until {
    type Err = String;

    fn from_str(s: &str) -> Result<Until, String> {
        let s = s.trim();
        let s = s.strip_prefix("next ").unwrap_or(s);
        match s.split_once(' ') {
            Some((day, time)) => Ok(Until {
                weekday: Some(weekday(day).ok_or_else(|| {
                    format!("{day:?} is not a weekday (mon, tue, …, or monday, tuesday, …)")
                })?),
                time: time.parse()?,
            }),
            None => Ok(Until {
                weekday: None,
                time: s.parse()?,
            }),
        }
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weekday {
            Some(w) => {
                let name = format!("{w:?}").to_lowercase();
                write!(f, "{} {}", &name[..3], self.time)
            }
            None => write!(f, "{}", self.time),
        }
    }
}

/// A recurring local time: which weekdays, at which times of day, in the contact's zone.
///
/// Three spellings, all parsed here (a strict subset; jiff does the calendar, and the crates that
/// parse full RRULE or cron bring chrono and its zone database beside jiff's):
/// - plain: `"08:00"` or `"daily 08:00"`, `"mon,wed,fri 18:30"`, `"weekdays 07:30"`,
///   `"weekends 10:00"`, several times `"daily 08:00,20:00"`;
/// - RRULE (RFC 5545): `"FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=18;BYMINUTE=30"` (`FREQ` DAILY or
///   WEEKLY, `BYDAY`, `BYHOUR`, `BYMINUTE`, `INTERVAL=1`; an `RRULE:` prefix is allowed);
/// - cron (five fields): `"30 18 * * 1,3,5"` (minute and hour lists, day of week as numbers
///   0-7, names or ranges; day of month and month must be `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    /// Monday first.
    days: [bool; 7],
    /// Sorted, without repeats.
    times: Vec<Time>,
}

/// Longest schedule text, and most times of day in one.
const MAX_SCHEDULE_LEN: usize = 200;
const MAX_TIMES: usize = 24;

impl Schedule {
    /// The first occurrence strictly after `from_ms`, in `tz` (a time skipped by DST is taken
    /// as the same time after the jump, a repeated one as its first).
    pub fn next_after(&self, from_ms: i64, tz: &TimeZone) -> Option<i64> {
        let now = zoned(from_ms, tz);
        let mut date = now.date();
        for _ in 0..9 {
            if self.days[date.weekday().to_monday_zero_offset() as usize] {
                for t in &self.times {
                    let at = date.to_datetime(*t).to_zoned(tz.clone()).ok()?;
                    if at.timestamp() > now.timestamp() {
                        return Some(millis(&at));
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    fn build(text: &str, days: [bool; 7], mut times: Vec<Time>) -> Result<Schedule, String> {
        if !days.iter().any(|d| *d) {
            return Err(format!("{text:?}: no day of the week"));
        }
        times.sort();
        times.dedup();
        if times.is_empty() {
            return Err(format!("{text:?}: no time of day"));
        }
        if times.len() > MAX_TIMES {
            return Err(format!("{text:?}: at most {MAX_TIMES} times a day"));
        }
        Ok(Schedule {
            text: text.to_owned(),
            days,
            times,
        })
    }

    fn plain(s: &str) -> Result<Schedule, String> {
        let (days_part, times_part) = match s.rsplit_once(' ') {
            Some((d, t)) => (d.trim(), t),
            None => ("daily", s),
        };
        let mut days = [false; 7];
        match days_part.to_lowercase().as_str() {
            "daily" | "every day" => days = [true; 7],
            "weekdays" => days[..5].fill(true),
            "weekends" => days[5..].fill(true),
            list => {
                for name in list.split(',') {
                    let name = name.trim();
                    let w = weekday(name).ok_or_else(|| {
                        format!(
                            "{name:?} is not a weekday (mon, tue, …; or daily, weekdays, weekends)"
                        )
                    })?;
                    days[w.to_monday_zero_offset() as usize] = true;
                }
            }
        }
        let times = times_part
            .split(',')
            .map(|t| t.parse::<LocalTime>().map(|l| l.0))
            .collect::<Result<Vec<_>, _>>()?;
        Schedule::build(s, days, times)
    }

    fn rrule(s: &str) -> Result<Schedule, String> {
        let body = s
            .strip_prefix("RRULE:")
            .or_else(|| s.strip_prefix("rrule:"))
            .unwrap_or(s);
        let mut freq = None;
        let mut days = None;
        let mut hours: Vec<i8> = Vec::new();
        let mut minutes: Vec<i8> = vec![0];
        for part in body.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: RRULE parts are KEY=VALUE"))?;
            match key.to_ascii_uppercase().as_str() {
                "FREQ" => freq = Some(value.to_ascii_uppercase()),
                "INTERVAL" if value == "1" => {}
                "BYDAY" => {
                    let mut d = [false; 7];
                    for code in value.split(',') {
                        let i = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
                            .iter()
                            .position(|c| c.eq_ignore_ascii_case(code.trim()))
                            .ok_or_else(|| {
                                format!("BYDAY {code:?}: use MO, TU, WE, TH, FR, SA, SU")
                            })?;
                        d[i] = true;
                    }
                    days = Some(d);
                }
                "BYHOUR" => hours = numbers(value, 0, 23, "BYHOUR")?,
                "BYMINUTE" => minutes = numbers(value, 0, 59, "BYMINUTE")?,
                other => {
                    return Err(format!(
                        "RRULE {other}: not supported (FREQ=DAILY|WEEKLY, BYDAY, BYHOUR, BYMINUTE)"
                    ));
                }
            }
        }
        let days = match freq.as_deref() {
            Some("DAILY") => days.unwrap_or([true; 7]),
            Some("WEEKLY") => days.ok_or("FREQ=WEEKLY needs BYDAY")?,
            _ => return Err(format!("{s:?}: FREQ=DAILY or FREQ=WEEKLY")),
        };
        if hours.is_empty() {
            return Err(format!("{s:?}: BYHOUR is needed (the local hour)"));
        }
        Schedule::build(s, days, cross(&hours, &minutes))
    }

    fn cron(s: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!("{s:?}: cron has five fields"));
        };
        if dom != "*" || month != "*" {
            return Err(format!(
                "{s:?}: day of month and month must be `*` (use a date-field wait for dates)"
            ));
        }
        let minutes = numbers(minute, 0, 59, "the cron minute")?;
        let hours = numbers(hour, 0, 23, "the cron hour")?;
        let mut days = [false; 7];
        if dow == "*" {
            days = [true; 7];
        } else {
            for item in dow.split(',') {
                let day = |t: &str| -> Result<usize, String> {
                    let n = match t.parse::<u8>() {
                        Ok(n) if n <= 7 => n,
                        Ok(_) => return Err(format!("cron day {t:?}: 0-7")),
                        Err(_) => weekday(t)
                            .map(|w| w.to_sunday_zero_offset() as u8)
                            .ok_or_else(|| format!("cron day {t:?}: 0-7 or mon..sun"))?,
                    };
                    // cron: 0 and 7 are Sunday; ours start on Monday.
                    Ok((usize::from(n) + 6) % 7)
                };
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => days[day(item)?] = true,
                }
            }
        }
        Schedule::build(s, days, cross(&hours, &minutes))
    }
}

/// `"8"`, `"8,20"`: numbers in `min..=max` (a plain list, no steps or ranges).
fn numbers(list: &str, min: i8, max: i8, what: &str) -> Result<Vec<i8>, String> {
    list.split(',')
        .map(|n| match n.trim().parse::<i8>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!("{what} {n:?}: a number {min}-{max} (a comma list)")),
        })
        .collect()
}

fn cross(hours: &[i8], minutes: &[i8]) -> Vec<Time> {
    let mut times = Vec::new();
    for h in hours {
        for m in minutes {
            if let Ok(t) = Time::new(*h, *m, 0, 0) {
                times.push(t);
            }
        }
    }
    times
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s.len() > MAX_SCHEDULE_LEN {
            return Err(format!("a schedule is at most {MAX_SCHEDULE_LEN} bytes"));
        }
        let upper = s.to_ascii_uppercase();
        if upper.starts_with("RRULE:") || upper.starts_with("FREQ=") {
            Schedule::rrule(s)
        } else if s.split_whitespace().count() == 5 {
            Schedule::cron(s)
        } else {
            Schedule::plain(s)
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `field` date (`"2026-12-24"`, or a timestamp whose local date is taken) plus `offset`
/// days, at local time `at`.
pub fn field_date(value: &str, offset: Option<&Span>, at: LocalTime, tz: &TimeZone) -> Option<i64> {
    let value = value.trim();
    let date: Date = value.parse::<Date>().ok().or_else(|| {
        value
            .parse::<Timestamp>()
            .ok()
            .map(|t| t.to_zoned(tz.clone()).date())
    })?;
    let mut datetime = date.to_datetime(at.0);
    if let Some(offset) = offset {
        datetime = datetime.checked_add(*offset).ok()?;
    }
    datetime.to_zoned(tz.clone()).ok().map(|z| millis(&z))
}

/// Quiet hours, `"21:00-08:00"`: no proactive message inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: LocalTime,
    pub end: LocalTime,
}

impl FromStr for QuietHours {
    type Err = String;

    fn from_str(s: &str) -> Result<QuietHours, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: quiet hours are \"HH:MM-HH:MM\""))?;
        Ok(QuietHours {
            start: a.parse()?,
            end: b.parse()?,
        })
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl QuietHours {
    /// When a proactive message due at `ms` may go: `ms` itself outside quiet hours, else their
    /// end (the next one, in `tz`).
    pub fn release(&self, ms: i64, tz: &TimeZone) -> i64 {
        let (start, end) = (self.start.0, self.end.0);
        if start == end {
            return ms;
        }
        let local = zoned(ms, tz);
        let t = local.time();
        let quiet = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if !quiet {
            return ms;
        }
        let mut date = local.date();
        if start > end && t >= start {
            // Evening part of a window across midnight: it ends tomorrow.
            date = date.tomorrow().unwrap_or(date);
        }
        date.to_datetime(end)
            .to_zoned(tz.clone())
            .map(|z| millis(&z).max(ms))
            .unwrap_or(ms)
    }
}

/// The contact's local day of `ms`: its date and its bounds `[start, next start)` in ms.
pub fn local_day(ms: i64, tz: &TimeZone) -> (Date, i64, i64) {
    let local = zoned(ms, tz);
    let date = local.date();
    let start = local.start_of_day().map(|z| millis(&z)).unwrap_or(ms);
    let next = date
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .and_then(|z| z.start_of_day().ok())
        .map(|z| millis(&z))
        .unwrap_or(ms + 86_400_000);
    (date, start, next)
}

/// The UTC offset in `tz` at `ms`, in seconds (DST crossings show as a change).
pub fn offset_seconds(ms: i64, tz: &TimeZone) -> i32 {
    zoned(ms, tz).offset().seconds()
}

/// `2026-03-08T08:00:00-04:00[America/New_York]` → `2026-03-08T08:00:00-04:00`.
pub fn local_rfc3339(ms: i64, tz: &TimeZone) -> String {
    let z = zoned(ms, tz);
    let offset = z.offset().seconds();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.abs();
    format!(
        "{}{}{:02}:{:02}",
        z.datetime().strftime("%Y-%m-%dT%H:%M:%S"),
        sign,
        offset / 3600,
        offset % 3600 / 60
    )
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

string_serde!(Duration);
string_serde!(Offset);
string_serde!(LocalTime);
string_serde!(Until);
string_serde!(QuietHours);
string_serde!(Schedule);

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or(0)
    }

    #[test]
    fn a_day_keeps_the_local_hour_across_dst() {
        let ny = zone("America/New_York").expect("zone");
        // 2026-03-08 02:00 EST → EDT. Saturday 08:00 EST is 13:00Z; Sunday 08:00 EDT is 12:00Z.
        let day: Duration = "1d".parse().expect("duration");
        assert_eq!(
            day.after(at("2026-03-07T13:00:00Z"), &ny),
            Some(at("2026-03-08T12:00:00Z"))
        );
        let hours: Duration = "24h".parse().expect("duration");
        assert_eq!(
            hours.after(at("2026-03-07T13:00:00Z"), &ny),
            Some(at("2026-03-08T13:00:00Z"))
        );
    }

    #[test]
    fn until_finds_the_next_local_time_and_handles_the_gap() {
        let ny = zone("America/New_York").expect("zone");
        let eight: Until = "08:00".parse().expect("until");
        assert_eq!(
            eight.next_after(at("2026-03-07T13:00:00Z"), &ny),
            Some(at("2026-03-08T12:00:00Z")),
            "strictly after: 08:00 today has just passed"
        );
        // 02:30 does not exist on 2026-03-08 in New York: taken as 03:30 EDT.
        let gap: Until = "02:30".parse().expect("until");
        assert_eq!(
            gap.next_after(at("2026-03-08T05:00:00Z"), &ny),
            Some(at("2026-03-08T07:30:00Z"))
        );
        let monday: Until = "mon 09:00".parse().expect("until");
        let kolkata = zone("Asia/Kolkata").expect("zone");
        // Thursday 2026-12-03 → Monday 2026-12-07 09:00 IST = 03:30Z.
        assert_eq!(
            monday.next_after(at("2026-12-03T12:00:00Z"), &kolkata),
            Some(at("2026-12-07T03:30:00Z"))
        );
        assert!("25:00".parse::<Until>().is_err());
        assert!("funday 09:00".parse::<Until>().is_err());
    }

    #[test]
    fn quiet_hours_defer_to_their_end() {
        let utc = zone("UTC").expect("zone");
        let q: QuietHours = "21:00-08:00".parse().expect("quiet");
        let evening = at("2026-12-03T22:00:00Z");
        assert_eq!(q.release(evening, &utc), at("2026-12-04T08:00:00Z"));
        let early = at("2026-12-04T06:59:00Z");
        assert_eq!(q.release(early, &utc), at("2026-12-04T08:00:00Z"));
        let day = at("2026-12-04T12:00:00Z");
        assert_eq!(q.release(day, &utc), day);
        let lunch: QuietHours = "12:00-14:00".parse().expect("quiet");
        assert_eq!(lunch.release(day, &utc), at("2026-12-04T14:00:00Z"));
        assert_eq!(
            q.release(at("2026-12-04T08:00:00Z"), &utc),
            at("2026-12-04T08:00:00Z")
        );
    }

    #[test]
    fn durations_are_checked() {
        assert!("0d".parse::<Duration>().is_err());
        assert!("-1h".parse::<Duration>().is_err());
        assert!("1x".parse::<Duration>().is_err());
        assert!("500d".parse::<Duration>().is_err());
        let d: Duration = "90m".parse().expect("duration");
        assert_eq!(d.approx_ms(), 90 * 60_000);
        assert_eq!(
            "1 week".parse::<Duration>().map(|d| d.approx_ms()),
            Ok(7 * 24 * HOUR)
        );
    }

    #[test]
    fn local_days_follow_the_zone() {
        let auckland = zone("Pacific/Auckland").expect("zone");
        let (date, start, next) = local_day(at("2026-12-03T12:00:00Z"), &auckland);
        // 12:00Z is 01:00 on 4 December in Auckland (NZDT, +13).
        assert_eq!(date.to_string(), "2026-12-04");
        assert_eq!(start, at("2026-12-03T11:00:00Z"));
        assert_eq!(next, at("2026-12-04T11:00:00Z"));
        assert_eq!(local_rfc3339(start, &auckland), "2026-12-04T00:00:00+13:00");
    }

    #[test]
    fn schedules_in_three_spellings_agree_and_keep_the_local_hour() {
        let ny = zone("America/New_York").expect("zone");
        let plain: Schedule = "mon,wed,fri 18:30".parse().expect("plain");
        let rrule: Schedule = "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=18;BYMINUTE=30"
            .parse()
            .expect("rrule");
        let cron: Schedule = "30 18 * * 1,3,5".parse().expect("cron");
        let ranged: Schedule = "30 18 * * mon-fri".parse().expect("cron range");
        // Thursday 2026-03-05, before DST (EST, -5): the next is Friday 18:30 EST = 23:30Z;
        // after it, Monday 2026-03-09 18:30 EDT (-4) = 22:30Z.
        let thursday = at("2026-03-05T12:00:00Z");
        for s in [&plain, &rrule, &cron] {
            let first = s.next_after(thursday, &ny).expect("first");
            assert_eq!(first, at("2026-03-06T23:30:00Z"), "{s}");
            let second = s.next_after(first, &ny).expect("second");
            assert_eq!(second, at("2026-03-09T22:30:00Z"), "{s}");
        }
        assert_eq!(
            ranged.next_after(at("2026-03-06T23:30:00Z"), &ny),
            Some(at("2026-03-09T22:30:00Z")),
            "mon-fri skips the weekend"
        );
        let twice: Schedule = "daily 08:00,20:00".parse().expect("twice");
        let kolkata = zone("Asia/Kolkata").expect("zone");
        // 08:00 IST = 02:30Z, 20:00 IST = 14:30Z.
        assert_eq!(
            twice.next_after(at("2026-12-03T03:00:00Z"), &kolkata),
            Some(at("2026-12-03T14:30:00Z"))
        );
        let daily: Schedule = "FREQ=DAILY;BYHOUR=8".parse().expect("daily rrule");
        assert_eq!(
            daily.next_after(at("2026-12-03T03:00:00Z"), &kolkata),
            Some(at("2026-12-04T02:30:00Z"))
        );
        let sunday: Schedule = "0 9 * * 0".parse().expect("sunday");
        let seven: Schedule = "0 9 * * 7".parse().expect("sunday as 7");
        assert_eq!(
            sunday.next_after(thursday, &ny),
            seven.next_after(thursday, &ny)
        );
    }

    #[test]
    fn bad_and_hostile_schedules_are_refused_with_a_reason() {
        for bad in [
            "",
            "funday 08:00",
            "daily 25:00",
            "FREQ=MONTHLY;BYHOUR=8",
            "FREQ=WEEKLY;BYHOUR=8",
            "FREQ=DAILY;BYMINUTE=5",
            "FREQ=DAILY;BYHOUR=8;COUNT=3",
            "FREQ=DAILY;INTERVAL=2;BYHOUR=8",
            "FREQ=DAILY;BYHOUR=99",
            "*/5 * * * *",
            "0 8 1 * *",
            "0 8 * * 9",
            "BYHOUR",
        ] {
            let e = bad.parse::<Schedule>().expect_err(bad);
            assert!(!e.is_empty(), "{bad}: {e}");
        }
        // Long inputs are refused before any work; many times of day are capped.
        let long = format!("daily {}", vec!["08:00"; 10_000].join(","));
        assert!(long.parse::<Schedule>().is_err());
        let hours: Vec<String> = (0..24).map(|h| h.to_string()).collect();
        let many = format!("FREQ=DAILY;BYHOUR={};BYMINUTE=0,30", hours.join(","));
        assert!(
            many.parse::<Schedule>()
                .expect_err("48 a day")
                .contains("at most")
        );
    }
}
