//! A fixed-capacity ring of per-second values: pushing past the capacity overwrites
//! the oldest. Storage grows with the ring's age up to the capacity, so a series that
//! has existed for a minute holds 60 values, not 900.

/// The last `cap` values pushed, oldest first when read.
#[derive(Debug, Clone)]
pub(super) struct Ring<T> {
    buf: Vec<T>,
    /// Where the oldest value is once the ring is full (the next one to overwrite).
    start: usize,
    cap: usize,
}

impl<T: Copy> Ring<T> {
    pub(super) fn new(cap: usize) -> Ring<T> {
        Ring {
            buf: Vec::new(),
            start: 0,
            cap: cap.max(1),
        }
    }

    pub(super) fn push(&mut self, v: T) {
        if self.buf.len() < self.cap {
            self.buf.push(v);
        } else {
            self.buf[self.start] = v;
            self.start = (self.start + 1) % self.cap;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The newest value.
    #[cfg(test)]
    pub(super) fn newest(&self) -> Option<T> {
        self.last(1).next()
    }

    /// The newest `n` values (fewer when it holds fewer), oldest first.
    pub(super) fn last(&self, n: usize) -> impl Iterator<Item = T> + '_ {
        let len = self.buf.len();
        let n = n.min(len);
        // Logical index i (0 = oldest) lives at (start + i) % len.
        (len - n..len).map(move |i| self.buf[(self.start + i) % len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &Ring<u32>) -> Vec<u32> {
        r.last(usize::MAX).collect()
    }

    #[test]
    fn keeps_the_newest_values_in_order() {
        let mut r = Ring::new(3);
        assert_eq!(all(&r), Vec::<u32>::new());
        assert_eq!(r.newest(), None);
        r.push(1);
        r.push(2);
        assert_eq!(all(&r), [1, 2]);
        r.push(3);
        r.push(4);
        assert_eq!(all(&r), [2, 3, 4], "the oldest is overwritten");
        r.push(5);
        r.push(6);
        r.push(7);
        assert_eq!(all(&r), [5, 6, 7]);
        assert_eq!(r.len(), 3, "never grows past its capacity");
        assert_eq!(r.newest(), Some(7));
    }

    #[test]
    fn last_n_is_the_newest_n() {
        let mut r = Ring::new(900);
        for i in 0..2000 {
            r.push(i);
        }
        assert_eq!(r.len(), 900);
        assert_eq!(r.last(3).collect::<Vec<_>>(), [1997, 1998, 1999]);
        let v: Vec<u32> = r.last(900).collect();
        assert_eq!(v.first(), Some(&1100));
        assert_eq!(v.last(), Some(&1999));
        assert!(v.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(r.last(0).count(), 0);
    }

    #[test]
    fn capacity_zero_is_one() {
        let mut r = Ring::new(0);
        r.push(1);
        r.push(2);
        assert_eq!(all(&r), [2]);
    }
}
