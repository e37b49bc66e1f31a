//! The encoder on its own thread, behind a queue.
//!
//! Async callers send a request and await a oneshot reply; the thread drains the queue,
//! merges the waiting requests into one encoder call (which batches them by its token
//! budget) and replies to each.
//! A model swap is a message on the same queue, so it happens between batches.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Encoder, TextEmbedding};
use crate::error::{ModelError, Result};
use crate::model::Manifest;

type Reply = oneshot::Sender<Result<Encoded>>;

/// A request's result: the embeddings and the manifest of the model that made them.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// One embedding per text, in order.
    pub embeddings: Vec<Arc<TextEmbedding>>,
    /// The model that produced them.
    pub model: Arc<Manifest>,
}

enum Msg {
    Encode(Vec<String>, Reply),
    Swap(Box<Encoder>, oneshot::Sender<()>),
}

/// A handle to the encoder thread; cheap to clone. The thread ends when the last handle
/// is dropped (its queue closes).
#[derive(Clone)]
pub struct EncoderService {
    tx: crossbeam_channel::Sender<Msg>,
}

impl EncoderService {
    /// Moves `encoder` onto a new thread.
    pub fn spawn(encoder: Encoder) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        std::thread::Builder::new()
            .name("uwe-encoder".into())
            .spawn(move || run(encoder, rx))
            .expect("spawn encoder thread");
        EncoderService { tx }
    }

    /// Encodes `texts` on the encoder thread.
    pub async fn encode(&self, texts: Vec<String>) -> Result<Encoded> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Encode(texts, tx))
            .map_err(|_| ModelError::Runtime("the encoder thread has stopped".into()))?;
        rx.await
            .map_err(|_| ModelError::Runtime("the encoder thread has stopped".into()))?
    }

    /// Replaces the serving encoder between two batches; resolves once it serves.
    pub async fn swap(&self, encoder: Encoder) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Swap(Box::new(encoder), tx))
            .map_err(|_| ModelError::Runtime("the encoder thread has stopped".into()))?;
        rx.await
            .map_err(|_| ModelError::Runtime("the encoder thread has stopped".into()))
    }
}

fn run(mut encoder: Encoder, rx: crossbeam_channel::Receiver<Msg>) {
    let mut manifest = Arc::new(encoder.manifest().clone());
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        // Merge what else is already queued, so the session sees full batches under load.
        while let Ok(m) = rx.try_recv() {
            let is_swap = matches!(m, Msg::Swap(..));
            pending.push(m);
            if is_swap {
                break;
            }
        }
        let mut texts: Vec<String> = Vec::new();
        let mut replies: Vec<(Reply, usize)> = Vec::new();
        let mut swap = None;
        for m in pending {
            match m {
                Msg::Encode(t, r) => {
                    replies.push((r, t.len()));
                    texts.extend(t);
                }
                Msg::Swap(e, done) => swap = Some((e, done)),
            }
        }
        if !replies.is_empty() {
            match encoder.encode(&texts) {
                Ok(embs) => {
                    let mut it = embs.into_iter();
                    for (r, n) in replies {
                        let part: Vec<_> = it.by_ref().take(n).collect();
                        let _ = r.send(Ok(Encoded {
                            embeddings: part,
                            model: manifest.clone(),
                        }));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (r, _) in replies {
                        let _ = r.send(Err(ModelError::Runtime(msg.clone())));
                    }
                }
            }
        }
        if let Some((e, done)) = swap {
            encoder = *e;
            manifest = Arc::new(encoder.manifest().clone());
            let _ = done.send(());
        }
    }
}
