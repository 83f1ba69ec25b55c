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
