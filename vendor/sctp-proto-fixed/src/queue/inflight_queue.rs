use crate::chunk::chunk_payload_data::ChunkPayloadData;
use crate::util::sna32lt;

use alloc::collections::VecDeque;

/// The sender's in-flight DATA chunks, indexed by TSN.
///
/// The sender assigns TSNs consecutively and retires chunks only from the
/// front (as the cumulative TSN ack point advances), so a ring of slots
/// addressed by `tsn - first_tsn` gives constant-time lookup, insertion and
/// removal: no hashing per lookup and no re-sorting of keys per transmitted
/// chunk, which dominated the sender's CPU at high throughput.
///
/// A slot is `None` only for a TSN that was skipped when pushing (never done
/// by the association itself); the front slot is always occupied, so
/// `first_tsn` is the lowest TSN in flight.
#[derive(Debug, Default)]
pub(crate) struct InflightQueue {
    first_tsn: u32,
    slots: VecDeque<Option<ChunkPayloadData>>,
    len: usize,
    n_bytes: usize,
}

impl InflightQueue {
    fn index(&self, tsn: u32) -> Option<usize> {
        let offset = tsn.wrapping_sub(self.first_tsn) as usize;
        (offset < self.slots.len()).then_some(offset)
    }

    /// Insert `p` at its TSN (replacing a chunk already there).
    pub(crate) fn push_no_check(&mut self, p: ChunkPayloadData) {
        let tsn = p.tsn;
        if self.slots.is_empty() {
            self.first_tsn = tsn;
        } else if sna32lt(tsn, self.first_tsn) {
            let gap = self.first_tsn.wrapping_sub(tsn) as usize;
            for _ in 0..gap {
                self.slots.push_front(None);
            }
            self.first_tsn = tsn;
        }
        let offset = tsn.wrapping_sub(self.first_tsn) as usize;
        while self.slots.len() <= offset {
            self.slots.push_back(None);
        }
        self.n_bytes += p.user_data.len();
        self.len += 1;
        if let Some(old) = self.slots[offset].replace(p) {
            self.n_bytes -= old.user_data.len();
            self.len -= 1;
        }
    }

    /// Remove the lowest in-flight TSN, if it is `tsn`.
    pub(crate) fn pop(&mut self, tsn: u32) -> Option<ChunkPayloadData> {
        if self.slots.is_empty() || tsn != self.first_tsn {
            return None;
        }
        let c = self.slots.pop_front().flatten()?;
        self.first_tsn = self.first_tsn.wrapping_add(1);
        while self.slots.front().is_some_and(Option::is_none) {
            self.slots.pop_front();
            self.first_tsn = self.first_tsn.wrapping_add(1);
        }
        self.len -= 1;
        self.n_bytes = self.n_bytes.saturating_sub(c.user_data.len());
        Some(c)
    }

    pub(crate) fn get(&self, tsn: u32) -> Option<&ChunkPayloadData> {
        self.index(tsn).and_then(|i| self.slots[i].as_ref())
    }

    pub(crate) fn get_mut(&mut self, tsn: u32) -> Option<&mut ChunkPayloadData> {
        self.index(tsn).and_then(|i| self.slots[i].as_mut())
    }

    /// In-flight chunks in TSN order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ChunkPayloadData> {
        self.slots.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut ChunkPayloadData> {
        self.slots.iter_mut().flatten()
    }

    /// Abandon siblings by identity, including nonconsecutive TSNs.
    pub(crate) fn abandon_message(&mut self, message_id: u64) -> usize {
        let mut released = 0;
        for chunk in self.iter_mut() {
            if chunk.message_id == message_id {
                released += chunk.user_data.len();
                chunk.user_data.clear();
                chunk.abandoned = true;
                chunk.retransmit = false;
            }
        }
        self.n_bytes -= released;
        released
    }

    pub(crate) fn mark_all_to_retransmit(&mut self) {
        for chunk in self.iter_mut() {
            if !chunk.acked && !chunk.abandoned {
                chunk.retransmit = true;
            }
        }
    }

    pub(crate) fn mark_as_acked(&mut self, tsn: u32) -> usize {
        if let Some(c) = self.get_mut(tsn) {
            c.acked = true;
            c.retransmit = false;
            let n = c.user_data.len();
            c.user_data.clear();
            self.n_bytes -= n;
            n
        } else {
            0
        }
    }

    pub(crate) fn get_num_bytes(&self) -> usize {
        self.n_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains_stream(&self, stream_identifier: u16) -> bool {
        self.iter()
            .any(|chunk| chunk.stream_identifier == stream_identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use bytes::Bytes;

    fn chunk(tsn: u32, len: usize) -> ChunkPayloadData {
        ChunkPayloadData {
            tsn,
            user_data: Bytes::from(vec![0; len]),
            ..Default::default()
        }
    }

    #[test]
    fn consecutive_tsns_across_the_wrap() {
        let mut q = InflightQueue::default();
        let first = u32::MAX - 2;
        for i in 0..6 {
            q.push_no_check(chunk(first.wrapping_add(i), 10));
        }
        assert_eq!((q.len(), q.get_num_bytes()), (6, 60));
        assert_eq!(q.get(1).unwrap().tsn, 1);
        assert!(q.get(3).is_none());
        assert!(q.get(first.wrapping_sub(1)).is_none());
        let order: Vec<u32> = q.iter().map(|c| c.tsn).collect();
        assert_eq!(order, vec![first, first + 1, first + 2, 0, 1, 2]);

        // Only the lowest TSN can be popped.
        assert!(q.pop(first + 1).is_none());
        for i in 0..6 {
            assert_eq!(
                q.pop(first.wrapping_add(i)).unwrap().tsn,
                first.wrapping_add(i)
            );
        }
        assert_eq!((q.len(), q.get_num_bytes()), (0, 0));
        assert!(q.pop(3).is_none());
        // An emptied queue restarts at whatever TSN comes next.
        q.push_no_check(chunk(100, 1));
        assert_eq!(q.get(100).unwrap().tsn, 100);
    }

    #[test]
    fn skipped_tsns_are_holes_and_the_front_stays_occupied() {
        let mut q = InflightQueue::default();
        q.push_no_check(chunk(10, 1));
        q.push_no_check(chunk(13, 2));
        q.push_no_check(chunk(8, 4));
        assert_eq!(q.len(), 3);
        assert!(q.get(9).is_none() && q.get(11).is_none());
        assert_eq!(q.iter().map(|c| c.tsn).collect::<Vec<_>>(), vec![8, 10, 13]);
        assert_eq!(q.pop(8).unwrap().tsn, 8);
        // The hole at 9 is skipped: 10 is now the lowest TSN.
        assert!(q.pop(9).is_none());
        assert_eq!(q.pop(10).unwrap().tsn, 10);
        assert_eq!(q.pop(13).unwrap().tsn, 13);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn replacing_a_tsn_keeps_counts_and_acking_releases_bytes() {
        let mut q = InflightQueue::default();
        q.push_no_check(chunk(5, 10));
        q.push_no_check(chunk(6, 10));
        q.push_no_check(chunk(5, 3));
        assert_eq!((q.len(), q.get_num_bytes()), (2, 13));
        assert_eq!(q.mark_as_acked(6), 10);
        assert_eq!(q.mark_as_acked(7), 0);
        assert_eq!(q.get_num_bytes(), 3);
        assert!(q.get(6).unwrap().acked);
        q.mark_all_to_retransmit();
        assert!(q.get(5).unwrap().retransmit);
        assert!(!q.get(6).unwrap().retransmit);
    }
}
