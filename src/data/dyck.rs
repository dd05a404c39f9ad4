//! Dyck-k bracket sequences for stage 1's formal-language baseline, each drawn from its own key so that
//! any sequence can be generated again without storing it.

use crate::rng::Stream;

/// Dyck-k sequences (docs/method.md section 5's baseline): k bracket types, a maximum depth drawn per
/// sequence from 1..=max_depth, an opening bracket with probability p_open where both moves are legal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dyck {
    pub kinds: u32,
    pub max_depth: u32,
    pub p_open: f64,
}

impl Dyck {
    pub const PAPER: Dyck = Dyck { kinds: 64, max_depth: 16, p_open: 0.5 };

    /// Open bracket of type i is token i, its closing bracket token kinds + i.
    pub fn vocab(&self) -> u32 {
        2 * self.kinds
    }

    pub fn sequence(&self, key: u64, len: usize) -> Vec<u32> {
        let mut s = Stream::new(key, 0);
        let depth_cap = 1 + ((u64::from(s.next_u32()) * u64::from(self.max_depth)) >> 32) as usize;
        let mut stack: Vec<u32> = Vec::new();
        (0..len)
            .map(|_| {
                let open = stack.is_empty() || (stack.len() < depth_cap && s.next_open_f64() < self.p_open);
                if open {
                    let kind = ((u64::from(s.next_u32()) * u64::from(self.kinds)) >> 32) as u32;
                    stack.push(kind);
                    kind
                } else {
                    self.kinds + stack.pop().expect("closing needs an open bracket")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dyck_sequences_are_well_nested() {
        let d = Dyck::PAPER;
        for key in 0..50 {
            let seq = d.sequence(key, 300);
            let mut stack = Vec::new();
            let mut deepest = 0;
            for &t in &seq {
                assert!(t < d.vocab());
                if t < d.kinds {
                    stack.push(t);
                    deepest = deepest.max(stack.len());
                } else {
                    assert_eq!(
                        stack.pop(),
                        Some(t - d.kinds),
                        "a closing bracket must match the last open one"
                    );
                }
            }
            assert!(deepest <= 16);
        }
        assert_eq!(d.sequence(3, 100), d.sequence(3, 100));
    }
}
