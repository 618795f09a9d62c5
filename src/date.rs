//! Dates as imgbuild writes them: from `SOURCE_DATE_EPOCH`, never from a clock. A leaf that
//! images, documents and TLS messages share.

/// `SOURCE_DATE_EPOCH` as an RFC 3339 UTC timestamp, without reading any clock.
/// 9999-12-31T23:59:59Z: the last time RFC 3339 (four-digit years) can write, and so the last
/// `created` time OCI tools read.
pub(crate) const MAX_EPOCH: u64 = 253_402_300_799;

pub(crate) fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn epoch_formats_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
