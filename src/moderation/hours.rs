//! Business hours for the hand-off message: when a conversation goes to a person outside the
//! team's hours, the contact is told when someone will be back instead of being left to wait.
//!
//! ```json
//! "business_hours": {
//!   "timezone": "Europe/Berlin",
//!   "days": { "mon": "09:00-17:00", "tue": "09:00-17:00", "sat": "10:00-13:00" },
//!   "closed_message": "Our team is away right now. A person will answer here from {{ next_open }}."
//! }
//! ```
//!
//! A day not listed is closed. `{{ next_open }}` in `closed_message` becomes the next opening
//! in the tenant's time zone ("Monday 09:00 (Europe/Berlin)"); `{{ hours }}` the week's hours.
//! Plain substitution, not a template language: nothing a tenant writes here is evaluated.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::Problem;

const DAYS: [(&str, Weekday, &str); 7] = [
    ("mon", Weekday::Monday, "Monday"),
    ("tue", Weekday::Tuesday, "Tuesday"),
    ("wed", Weekday::Wednesday, "Wednesday"),
    ("thu", Weekday::Thursday, "Thursday"),
    ("fri", Weekday::Friday, "Friday"),
    ("sat", Weekday::Saturday, "Saturday"),
    ("sun", Weekday::Sunday, "Sunday"),
];

/// The team's hours, as a policy holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// An IANA time zone (`Europe/Berlin`).
    pub timezone: String,
    /// Per weekday (`mon` … `sun`), `HH:MM-HH:MM`; a day not listed is closed.
    #[serde(default)]
    pub days: BTreeMap<String, String>,
    /// What the contact is told when a person takes over outside these hours.
    #[serde(default = "default_closed_message")]
    pub closed_message: String,
}

fn default_closed_message() -> String {
    "I've asked a person from the team to take over. The team is away right now; someone will answer here from {{ next_open }}. Until then I'll stay quiet.".into()
}

/// Business hours, checked and ready to use.
#[derive(Debug, Clone)]
pub struct Hours {
    tz: TimeZone,
    timezone: String,
    /// Monday first: the opening and closing time of each day, `None` when closed.
    days: [Option<(Time, Time)>; 7],
    closed_message: String,
}

fn parse_time(text: &str) -> Option<Time> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    if h == 24 && m == 0 {
        return Some(Time::MAX);
    }
    Time::new(h, m, 0, 0).ok()
}

impl Hours {
    /// Checks the hours, each problem with its path under `path`.
    pub fn new(hours: &BusinessHours, path: &str, problems: &mut Vec<Problem>) -> Option<Hours> {
        let before = problems.len();
        let tz = match TimeZone::get(&hours.timezone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push(Problem {
                    path: format!("{path}.timezone"),
                    message: format!("{:?} is not a known time zone", hours.timezone),
                });
                None
            }
        };
        let mut days = [None; 7];
        for (key, range) in &hours.days {
            let Some(i) = DAYS.iter().position(|(k, ..)| k == key) else {
                problems.push(Problem {
                    path: format!("{path}.days.{key}"),
                    message: "a day is one of mon, tue, wed, thu, fri, sat, sun".into(),
                });
                continue;
            };
            let parsed = range
                .split_once('-')
                .and_then(|(a, b)| Some((parse_time(a)?, parse_time(b)?)))
                .filter(|(a, b)| a < b);
            match parsed {
                Some(open) => days[i] = Some(open),
                None => problems.push(Problem {
                    path: format!("{path}.days.{key}"),
                    message: "HH:MM-HH:MM, opening before closing (e.g. 09:00-17:30)".into(),
                }),
            }
        }
        if hours.days.is_empty() {
            problems.push(Problem {
                path: format!("{path}.days"),
                message: "at least one day's hours".into(),
            });
        }
        if hours.closed_message.trim().is_empty() || hours.closed_message.len() > super::MAX_TEXT {
            problems.push(Problem {
                path: format!("{path}.closed_message"),
                message: format!("some text, at most {} bytes", super::MAX_TEXT),
            });
        }
        if problems.len() > before {
            return None;
        }
        Some(Hours {
            tz: tz?,
            timezone: hours.timezone.clone(),
            days,
            closed_message: hours.closed_message.clone(),
        })
    }

    /// `None` while the team is in (at `now`, Unix ms); otherwise the closed message with the
    /// next opening.
    pub fn closed_text(&self, now: i64) -> Option<String> {
        let local = Timestamp::from_millisecond(now)
            .ok()?
            .to_zoned(self.tz.clone());
        let today = local.weekday().to_monday_zero_offset() as usize;
        let time = local.time();
        if let Some((open, close)) = self.days[today]
            && open <= time
            && time < close
        {
            return None;
        }
        let next_open = (0..8).find_map(|ahead| {
            let i = (today + ahead) % 7;
            let (open, _) = self.days[i]?;
            (ahead > 0 || time < open).then(|| {
                let when = if ahead == 0 {
                    "today".to_owned()
                } else if ahead == 1 {
                    "tomorrow".to_owned()
                } else {
                    DAYS[i].2.to_owned()
                };
                format!("{when} {} ({})", open.strftime("%H:%M"), self.timezone)
            })
        })?;
        Some(
            self.closed_message
                .replace("{{ next_open }}", &next_open)
                .replace("{{next_open}}", &next_open)
                .replace("{{ hours }}", &self.summary())
                .replace("{{hours}}", &self.summary()),
        )
    }

    /// The week's hours: `Monday 09:00–17:00, Tuesday 09:00–17:00 (Europe/Berlin)`.
    pub fn summary(&self) -> String {
        let days: Vec<String> = DAYS
            .iter()
            .zip(&self.days)
            .filter_map(|((_, _, name), open)| {
                let (a, b) = (*open)?;
                let close = if b == Time::MAX {
                    "24:00".to_owned()
                } else {
                    b.strftime("%H:%M").to_string()
                };
                Some(format!("{name} {}–{close}", a.strftime("%H:%M")))
            })
            .collect();
        format!("{} ({})", days.join(", "), self.timezone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(json: serde_json::Value) -> Result<Hours, Vec<Problem>> {
        let h: BusinessHours = serde_json::from_value(json).expect("shape");
        let mut problems = Vec::new();
        Hours::new(&h, "handoff.business_hours", &mut problems).ok_or(problems)
    }

    /// Unix ms of a local time in Berlin.
    fn berlin(civil: &str) -> i64 {
        civil
            .parse::<jiff::civil::DateTime>()
            .expect("civil")
            .to_zoned(TimeZone::get("Europe/Berlin").expect("tz"))
            .expect("zoned")
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn open_hours_say_nothing_and_closed_ones_name_the_next_opening() {
        let h = hours(serde_json::json!({
            "timezone": "Europe/Berlin",
            "days": { "mon": "09:00-17:00", "tue": "09:00-17:00", "fri": "09:00-12:00" },
            "closed_message": "Back {{ next_open }}. Hours: {{hours}}"
        }))
        .expect("valid");
        // 2026-12-07 is a Monday.
        assert_eq!(h.closed_text(berlin("2026-12-07T10:00")), None);
        assert_eq!(
            h.closed_text(berlin("2026-12-07T08:30")).as_deref(),
            Some(
                "Back today 09:00 (Europe/Berlin). Hours: Monday 09:00–17:00, Tuesday 09:00–17:00, Friday 09:00–12:00 (Europe/Berlin)"
            )
        );
        let evening = h.closed_text(berlin("2026-12-07T17:00")).expect("closed");
        assert!(evening.starts_with("Back tomorrow 09:00"), "{evening}");
        let wednesday = h.closed_text(berlin("2026-12-09T11:00")).expect("closed");
        assert!(wednesday.starts_with("Back Friday 09:00"), "{wednesday}");
        let weekend = h.closed_text(berlin("2026-12-12T11:00")).expect("closed");
        assert!(weekend.starts_with("Back Monday 09:00"), "{weekend}");
        // Friday after closing: the next opening is Monday, a week's wrap.
        let friday = h.closed_text(berlin("2026-12-11T12:00")).expect("closed");
        assert!(friday.starts_with("Back Monday 09:00"), "{friday}");
    }

    #[test]
    fn hours_follow_the_time_zone_across_dst() {
        let h = hours(serde_json::json!({
            "timezone": "Europe/Berlin", "days": { "sun": "09:00-10:00" }
        }))
        .expect("valid");
        // 2026-03-29: clocks go forward in Berlin at 02:00; 09:30 local is open.
        assert_eq!(h.closed_text(berlin("2026-03-29T09:30")), None);
        assert!(h.closed_text(berlin("2026-03-29T10:00")).is_some());
    }

    #[test]
    fn bad_hours_are_refused_with_their_paths() {
        let problems = hours(serde_json::json!({
            "timezone": "Mars/Olympus",
            "days": { "mon": "17:00-09:00", "xyz": "09:00-10:00", "tue": "9-5", "wed": "25:00-26:00" },
            "closed_message": " "
        }))
        .expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "handoff.business_hours.timezone",
            "handoff.business_hours.days.mon",
            "handoff.business_hours.days.xyz",
            "handoff.business_hours.days.tue",
            "handoff.business_hours.days.wed",
            "handoff.business_hours.closed_message",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        let problems =
            hours(serde_json::json!({ "timezone": "UTC", "days": {} })).expect_err("no day");
        assert_eq!(problems[0].path, "handoff.business_hours.days");
        // A day to midnight.
        let h = hours(serde_json::json!({ "timezone": "UTC", "days": { "mon": "00:00-24:00" } }))
            .expect("valid");
        assert!(h.summary().contains("Monday 00:00–24:00"));
    }
}
