//! The seam between the HTTP front end and the gateway core: the [`Backend`] trait every front end pushes through.

/// One notification, as every front end hands it to the router. (At merge time this becomes
/// `crate::proto::Note` with the same fields; keep the name `Note` and these fields.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: u8,
    pub priority: u8,
    pub flags: u8,
    pub expiry: u32,
    pub collapse: bytes::Bytes,
    pub payload: bytes::Bytes,
}

/// One token's answer: the same meaning as a RESULT frame (protocol.md): status, msg_id, info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: crate::proto::Status,
    pub msg_id: u64,
    pub info: u64,
}

/// A FEEDBACK page: (unregistered at unix ms, token), oldest first, and whether more follow.
pub struct FeedbackPage {
    pub entries: Vec<(u64, crate::proto::Token)>,
    pub more: bool,
}

pub type Done<T> = Box<dyn FnOnce(T) + Send + 'static>;

pub trait Backend: Send + Sync + 'static {
    /// Pushes `note` to each token (1..=1000) of app index `app`; `done` is called once, from another
    /// thread, with one outcome per token in request order. Validation (payload size, kind, priority,
    /// flags), token checks, rate limits, draining (UNAVAILABLE, info = retry ms) happen behind this call.
    fn push(&self, app: u16, tokens: Vec<crate::proto::Token>, note: Note, done: Done<Vec<Outcome>>);
    /// The app's unregistered tokens after the cursor (since_ms, after), as the FEEDBACK frame.
    fn feedback(&self, app: u16, since_ms: u64, after: crate::proto::Token, done: Done<FeedbackPage>);
    /// Receipts of `app` go to `sink` until it is dropped/disconnected; the same hand-out rule as
    /// SUBSCRIBE_RECEIPTS (protocol.md §10.1). A full sink means the receipt goes back to be kept.
    fn subscribe_receipts(&self, app: u16, sink: crossbeam_channel::Sender<crate::store::Receipt>);
}
