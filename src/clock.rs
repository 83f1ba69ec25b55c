//! Wall-clock times as people and mail headers read them (UTC; no time-zone database).

/// A moment broken down into its calendar parts, UTC.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    secs_of_day: i64,
    /// 0 = Thursday (1970-01-01 was one).
    weekday_from_thursday: i64,
}

fn civil(ms: i64) -> Civil {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        secs_of_day: secs.rem_euclid(86_400),
        weekday_from_thursday: days.rem_euclid(7),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil);
/// `None` for a day the month does not have.
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let in_month = *month_days.get(usize::try_from(month - 1).ok()?)?;
    if !(1..=in_month).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Reads an expiry: `2026-12-31` is the end of that day (the next midnight, UTC), and
/// `2026-12-31T18:00:00Z` that moment. Unix ms.
pub fn parse_expiry(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once(['T', 't']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let mut number = |digits: usize| -> Option<i64> {
        let part = parts.next()?;
        (part.len() == digits && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(4)?, number(2)?, number(2)?);
    let days = days_from_civil(year, month, day)?;
    let secs = match time {
        None => (days + 1) * 86_400,
        Some(time) => {
            let time = time
                .strip_suffix(['Z', 'z'])
                .or_else(|| time.strip_suffix("+00:00"))?;
            let fields: Vec<&str> = time.split(':').collect();
            if fields.len() != 3
                || fields
                    .iter()
                    .any(|f| f.len() != 2 || !f.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            let [h, m, s] = [0, 1, 2].map(|i| fields[i].parse::<i64>().unwrap_or(99));
            if h > 23 || m > 59 || s > 59 {
                return None;
            }
            days * 86_400 + h * 3600 + m * 60 + s
        }
    };
    secs.checked_mul(1000)
}

/// An expiry as its owner reads it: `2026-12-31` when it is the end of that day, else
/// `2026-12-31 18:00:00 UTC`.
pub fn expiry(ms: i64) -> String {
    if ms.rem_euclid(86_400_000) == 0 {
        timestamp(ms - 1)[..10].to_owned()
    } else {
        format!("{} UTC", timestamp(ms))
    }
}

/// `2026-11-22 06:27:26` (UTC) for Unix milliseconds.
pub fn timestamp(ms: i64) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        c.year,
        c.month,
        c.day,
        c.secs_of_day / 3600,
        c.secs_of_day % 3600 / 60,
        c.secs_of_day % 60
    )
}

/// `Sun, 22 Nov 2026 06:27:26 +0000`: an RFC 5322 Date header for Unix milliseconds.
pub fn rfc5322(ms: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(ms);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[usize::try_from(c.weekday_from_thursday).unwrap_or(0)],
        c.day,
        MONTHS[usize::try_from(c.month - 1).unwrap_or(0)],
        c.year,
        c.secs_of_day / 3600,
        c.secs_of_day % 3600 / 60,
        c.secs_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_and_print_as_people_write_them() {
        let end_of_2026 = parse_expiry("2026-12-31").unwrap();
        assert_eq!(timestamp(end_of_2026), "2027-01-01 00:00:00");
        assert_eq!(expiry(end_of_2026), "2026-12-31");
        let evening = parse_expiry("2026-12-31T18:00:05Z").unwrap();
        assert_eq!(timestamp(evening), "2026-12-31 18:00:05");
        assert_eq!(expiry(evening), "2026-12-31 18:00:05 UTC");
        assert_eq!(
            parse_expiry("2028-02-29"),
            Some(1_835_395_200_000 + 86_400_000)
        );
        assert_eq!(
            parse_expiry("2000-03-01T00:00:00+00:00"),
            Some(951_868_800_000)
        );
        for bad in [
            "2027-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-01-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T10:00:00",
            "2026-01-01T10:00:00+02:00",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(
            rfc5322(1_795_328_846_000),
            "Sun, 22 Nov 2026 06:27:26 +0000"
        );
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
