//! `Bounds`, the inclusive range a duration, size, count or number of the config must
//! lie in, and the words of the message that refuses a value outside it. The ranges
//! themselves are named constants in `defaults.rs`, next to the defaults.
//!
//! Every message of an out-of-range value ends with `(allowed: MIN..=MAX)`, written in
//! the file's own syntax (`1ms..=1h`, `8KiB..=1MiB`, `1..=1000000`), so the operator can
//! copy a bound back into the file.

use std::fmt;
use std::time::Duration;

/// An inclusive range `min..=max`. Built in `const` context for the named bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds<T> {
    pub min: T,
    pub max: T,
}

impl<T: Copy + PartialOrd> Bounds<T> {
    pub const fn new(min: T, max: T) -> Self {
        Bounds { min, max }
    }

    pub fn contains(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }
}

impl fmt::Display for Bounds<Duration> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..={}",
            show_duration(self.min),
            show_duration(self.max)
        )
    }
}

/// Sizes are `Bounds<u64>` too; they are shown through [`SizeBounds`].
impl fmt::Display for Bounds<u64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

impl fmt::Display for Bounds<f64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", show_number(self.min), show_number(self.max))
    }
}

/// A `Bounds<u64>` of bytes, shown with 1024-based units (`8KiB..=1MiB`).
pub struct SizeBounds(pub Bounds<u64>);

impl fmt::Display for SizeBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", show_size(self.0.min), show_size(self.0.max))
    }
}

/// A duration in the largest unit that writes it exactly (`1h`, `90s`, `1ms`); every
/// form parses back as a config value.
pub fn show_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if ns == 0 {
        return "0s".to_owned();
    }
    let (unit, name) = UNITS
        .iter()
        .find(|(u, _)| ns % u == 0)
        .copied()
        .unwrap_or((1, "ns"));
    format!("{}{name}", ns / unit)
}

/// Bytes in the largest 1024-based unit that writes them exactly (`64KiB`, `16GiB`).
pub fn show_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    if bytes == 0 {
        return "0".to_owned();
    }
    match UNITS.iter().find(|(u, _)| bytes % u == 0) {
        Some((u, name)) => format!("{}{name}", bytes / u),
        None => format!("{bytes}B"),
    }
}

/// A number as TOML would read it back; huge or tiny ones in exponent form (`1e19`).
pub fn show_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `VALUE is above the maximum of MAX (allowed: MIN..=MAX)`.
pub fn above(value: impl fmt::Display, max: impl fmt::Display, range: impl fmt::Display) -> String {
    format!("{value} is above the maximum of {max} (allowed: {range})")
}

/// `VALUE is below the minimum of MIN (allowed: MIN..=MAX)`.
pub fn below(value: impl fmt::Display, min: impl fmt::Display, range: impl fmt::Display) -> String {
    format!("{value} is below the minimum of {min} (allowed: {range})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_shown_in_the_files_syntax() {
        let ms = Duration::from_millis;
        assert_eq!(Bounds::new(ms(1), ms(3_600_000)).to_string(), "1ms..=1h");
        assert_eq!(
            Bounds::new(Duration::ZERO, ms(86_400_000)).to_string(),
            "0s..=24h"
        );
        assert_eq!(show_duration(ms(90_000)), "90s");
        assert_eq!(show_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(
            SizeBounds(Bounds::new(8192, 1 << 20)).to_string(),
            "8KiB..=1MiB"
        );
        assert_eq!(show_size(1000), "1000B");
        assert_eq!(Bounds::new(1u64, 1_000_000).to_string(), "1..=1000000");
        assert_eq!(show_number(1e19), "1e19");
        assert_eq!(show_number(0.05), "0.05");
        assert_eq!(show_number(30.0), "30");
    }
}
