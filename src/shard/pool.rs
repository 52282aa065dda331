//! Per-shard pool of connection buffers: an idle connection holds none, a busy
//! one borrows a pair while bytes are in flight and gives it back after.

/// A connection's read remainder and unsent output.
#[derive(Default)]
pub struct Bufs {
    /// Bytes of an incomplete frame (or unparsed frames while paused).
    pub rbuf: Vec<u8>,
    /// Encoded frames not yet written.
    pub wbuf: Vec<u8>,
    /// How much of `wbuf` the socket already took.
    pub wpos: usize,
}

impl Bufs {
    pub fn is_idle(&self) -> bool {
        self.rbuf.is_empty() && self.wpos >= self.wbuf.len()
    }

    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

pub struct Pool {
    // Boxed because connections hold `Option<Box<Bufs>>`: 8 bytes while idle.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Bufs>>,
    max_free: usize,
    /// Buffers grown past this are not kept, so one burst does not pin memory.
    max_keep: usize,
}

impl Pool {
    pub fn new(max_free: usize, max_keep: usize) -> Pool {
        Pool { free: Vec::new(), max_free, max_keep }
    }

    pub fn get(&mut self) -> Box<Bufs> {
        self.free.pop().unwrap_or_default()
    }

    pub fn put(&mut self, mut b: Box<Bufs>) {
        if self.free.len() >= self.max_free
            || b.rbuf.capacity() > self.max_keep
            || b.wbuf.capacity() > self.max_keep
        {
            return;
        }
        b.rbuf.clear();
        b.wbuf.clear();
        b.wpos = 0;
        self.free.push(b);
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}
