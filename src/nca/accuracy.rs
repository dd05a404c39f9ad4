//! Cell accuracy of predicted NCA tokens: a patch token holds a 2x2 block of cells, and a prediction is
//! scored cell by cell, so a token with three of its four cells right still counts three.

/// Correct and scored cells over any number of (predicted, target) token pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellAccuracy {
    pub correct: u64,
    pub cells: u64,
}

impl CellAccuracy {
    /// Scores one prediction with an alphabet of `states`. A target that is no patch (a frame
    /// delimiter) is not scored; a predicted delimiter where a patch belongs gets none of its cells.
    pub fn add(&mut self, states: u32, predicted: u32, target: u32) {
        let patches = states.pow(4);
        if target >= patches {
            return;
        }
        self.cells += 4;
        if predicted < patches {
            let (p, t) = (patch_cells(states, predicted), patch_cells(states, target));
            self.correct += p.iter().zip(&t).filter(|(a, b)| a == b).count() as u64;
        }
    }

    /// Share of scored cells predicted exactly (0 when none was scored).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.cells.max(1) as f64
    }
}

/// The four cells of patch id a + n b + n^2 c + n^3 d: top-left a, top-right b, bottom-left c,
/// bottom-right d.
pub fn patch_cells(states: u32, token: u32) -> [u32; 4] {
    std::array::from_fn(|k| token / states.pow(k as u32) % states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_scored_one_by_one() {
        // n = 10: top-left 1, top-right 2, bottom-left 3, bottom-right 4.
        assert_eq!(patch_cells(10, 4321), [1, 2, 3, 4]);
        let mut acc = CellAccuracy::default();
        acc.add(10, 4321, 4321);
        assert_eq!(acc, CellAccuracy { correct: 4, cells: 4 });
        // Three cells right, the bottom-right one wrong.
        acc.add(10, 9321, 4321);
        assert_eq!(acc, CellAccuracy { correct: 7, cells: 8 });
        // A predicted delimiter (n^4) scores nothing; a delimiter target is not scored at all.
        acc.add(10, 10_000, 4321);
        acc.add(10, 4321, 10_001);
        assert_eq!(acc, CellAccuracy { correct: 7, cells: 12 });
        assert!((acc.accuracy() - 7.0 / 12.0).abs() < 1e-12);
        assert_eq!(CellAccuracy::default().accuracy(), 0.0);
    }
}
