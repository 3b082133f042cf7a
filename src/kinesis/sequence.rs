//! Kinesis sequence numbers: decimal strings of up to 56 digits (they do not fit a u128), compared
//! as numbers, not as text (`"10" > "9"`).
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_Record.html>

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Accepts 1 to 128 ASCII digits.
    pub fn parse(s: &str) -> Option<SequenceNumber> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SequenceNumber(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant(&self) -> &str {
        let t = self.0.trim_start_matches('0');
        if t.is_empty() {
            "0"
        } else {
            t
        }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SequenceNumber {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SequenceNumber::parse(&s).ok_or_else(|| format!("not a sequence number: {s:?}"))
    }
}

impl From<SequenceNumber> for String {
    fn from(s: SequenceNumber) -> String {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sn(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).unwrap()
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        let cases = [
            ("9", "10", Ordering::Less),
            ("10", "9", Ordering::Greater),
            ("007", "7", Ordering::Equal),
            (
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692540925702759324208523137515618",
                Ordering::Less,
            ),
            (
                "49590338271490256608559692538361571095921575989136588898",
                "1",
                Ordering::Greater,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(sn(a).cmp(&sn(b)), want, "{a} vs {b}");
        }
    }

    #[test]
    fn non_digits_are_not_sequence_numbers() {
        for s in ["", "12a", "-1", " 1", &"1".repeat(129)] {
            assert!(SequenceNumber::parse(s).is_none(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn order_matches_u128_where_it_fits(a in any::<u64>(), b in any::<u64>(), za in 0usize..5, zb in 0usize..5) {
            let x = sn(&format!("{}{a}", "0".repeat(za)));
            let y = sn(&format!("{}{b}", "0".repeat(zb)));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }
}
