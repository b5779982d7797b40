//! Byte counts as people read them in messages: `10 MiB`, `256 KiB`, `1.5 MiB`, never a raw
//! `10485760 bytes`.

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// `bytes` in MiB (one decimal at most) from 1 MiB up, in KiB below, in bytes below 1 KiB.
pub fn human(bytes: u64) -> String {
    if bytes >= MIB {
        format!("{} MiB", one_decimal(bytes, MIB))
    } else if bytes >= KIB {
        format!("{} KiB", one_decimal(bytes, KIB))
    } else {
        format!("{bytes} bytes")
    }
}

/// `n / unit` rounded to one decimal, without a trailing `.0`.
fn one_decimal(n: u64, unit: u64) -> String {
    let tenths = (u128::from(n) * 10 + u128::from(unit) / 2) / u128::from(unit);
    match tenths % 10 {
        0 => format!("{}", tenths / 10),
        d => format!("{}.{d}", tenths / 10),
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_in_the_largest_fitting_unit() {
        assert_eq!(human(10 * 1024 * 1024), "10 MiB");
        assert_eq!(human(1536 * 1024), "1.5 MiB");
        assert_eq!(human(262_144), "256 KiB");
        assert_eq!(human(65_536), "64 KiB");
        assert_eq!(human(1_000_000), "976.6 KiB");
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(30 * 1024 * 1024 + 1), "30 MiB");
    }
}
