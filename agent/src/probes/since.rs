//! A process's counter as the kernel keeps it (its CPU clock, its page
//! faults), counted from a baseline: the value at attach, or at the exec
//! that armed the target. Read by user space at each sample; no program.

use std::cell::Cell;

/// Counter values `N` counters wide, counted from a baseline.
pub struct Since<const N: usize> {
    /// The process and the counters' values where counting starts, once known.
    start: Cell<Option<(u32, [u64; N])>>,
    /// The last growth read, kept once the process is gone: a target that
    /// exits and is reaped by another parent loses at most what it did
    /// since the previous read (one interval).
    last: Cell<[u64; N]>,
}

impl<const N: usize> Since<N> {
    /// Counting from `start` for process `pid`, or from a baseline given
    /// later ([`Since::armed`]) when `None`.
    pub fn new(start: Option<(u32, [u64; N])>) -> Since<N> {
        Since { start: Cell::new(start), last: Cell::new([0; N]) }
    }

    /// The target was armed at its exec with these values then: counting
    /// starts there (unless it had started already).
    pub fn armed(&self, pid: u32, at_exec: [u64; N]) {
        if self.start.get().is_none() {
            self.start.set(Some((pid, at_exec)));
        }
    }

    /// The growth since the baseline, `read(pid)` giving the values now
    /// (`None`: the process is gone, and the last growth stands).
    pub fn read(&self, read: impl Fn(u32) -> Option<[u64; N]>) -> [u64; N] {
        if let Some((pid, start)) = self.start.get()
            && let Some(now) = read(pid)
        {
            self.last.set(std::array::from_fn(|i| now[i].saturating_sub(start[i])));
        }
        self.last.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_baseline_and_keeps_the_last_growth_once_gone() {
        let counter = Since::new(Some((7, [10, 100])));
        assert_eq!(counter.read(|_| Some([15, 130])), [5, 30]);
        assert_eq!(counter.read(|_| None), [5, 30], "gone: the last reading stands");
        let armed = Since::<1>::new(None);
        assert_eq!(armed.read(|_| Some([9])), [0], "nothing before a baseline");
        armed.armed(3, [4]);
        armed.armed(3, [8]); // the first exec stands
        assert_eq!(armed.read(|pid| (pid == 3).then_some([9])), [5]);
    }
}
